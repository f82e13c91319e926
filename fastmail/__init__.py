"""fastmail: a mail proxy for IMAP, POP3 and SMTP that reads nginx's mail configuration."""

__version__ = "0.1.0"
NGINX_COMPAT = "1.22.1"
