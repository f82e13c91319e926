# OpenSSL as fastmail calls it: declarations only, cimported by _tlsctx and _tls (the modules
# that link libssl/libcrypto). Macros are declared as the functions they behave like; the
# constants come from the headers, so a mismatch is a compile error, not a wrong value.

from libc.stdint cimport uint64_t


cdef extern from "<openssl/ssl.h>":
    ctypedef struct SSL_CTX
    ctypedef struct SSL
    ctypedef struct SSL_METHOD
    ctypedef struct SSL_SESSION
    ctypedef struct SSL_CIPHER
    ctypedef struct SSL_CONF_CTX
    ctypedef struct X509
    ctypedef struct X509_NAME
    ctypedef struct X509_STORE
    ctypedef struct X509_STORE_CTX
    ctypedef struct X509_LOOKUP
    ctypedef struct X509_LOOKUP_METHOD
    ctypedef struct X509_VERIFY_PARAM
    ctypedef struct EVP_PKEY
    ctypedef struct EVP_MD
    ctypedef struct EVP_CIPHER
    ctypedef struct EVP_CIPHER_CTX
    ctypedef struct EVP_MAC_CTX
    ctypedef struct ENGINE
    ctypedef struct BIO
    ctypedef struct BIO_METHOD
    ctypedef struct ASN1_INTEGER
    ctypedef struct DH
    ctypedef struct OPENSSL_STACK
    ctypedef struct stack_st_X509_NAME "struct stack_st_X509_NAME"  # STACK_OF(X509_NAME)
    ctypedef struct CRYPTO_EX_DATA
    ctypedef struct OSSL_PARAM:
        const char *key
    ctypedef void CRYPTO_EX_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx,
                                 long argl, void *argp) noexcept
    ctypedef int pem_password_cb(char *buf, int size, int rwflag, void *u) noexcept

    # results of SSL_get_error()
    int SSL_ERROR_NONE, SSL_ERROR_SSL, SSL_ERROR_WANT_READ, SSL_ERROR_WANT_WRITE
    int SSL_ERROR_SYSCALL, SSL_ERROR_ZERO_RETURN

    uint64_t SSL_OP_NO_SSLv3, SSL_OP_NO_TLSv1, SSL_OP_NO_TLSv1_1, SSL_OP_NO_TLSv1_2
    uint64_t SSL_OP_NO_TLSv1_3, SSL_OP_NO_COMPRESSION, SSL_OP_NO_ANTI_REPLAY
    uint64_t SSL_OP_IGNORE_UNEXPECTED_EOF, SSL_OP_NO_RENEGOTIATION, SSL_OP_NO_TICKET
    uint64_t SSL_OP_CIPHER_SERVER_PREFERENCE, SSL_OP_SINGLE_ECDH_USE, SSL_OP_SINGLE_DH_USE
    long SSL_MODE_RELEASE_BUFFERS, SSL_MODE_NO_AUTO_CHAIN, SSL_MODE_ENABLE_PARTIAL_WRITE
    long SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER
    long SSL_SESS_CACHE_OFF, SSL_SESS_CACHE_SERVER, SSL_SESS_CACHE_CLIENT
    long SSL_SESS_CACHE_NO_INTERNAL, SSL_SESS_CACHE_NO_INTERNAL_STORE
    long SSL_SESS_CACHE_NO_AUTO_CLEAR
    int SSL_VERIFY_NONE, SSL_VERIFY_PEER
    int SSL_TLSEXT_ERR_OK, SSL_TLSEXT_ERR_ALERT_FATAL, SSL_TLSEXT_ERR_NOACK
    int OPENSSL_NPN_NEGOTIATED
    int TLS1_VERSION, TLS1_3_VERSION
    int SSL_RECEIVED_SHUTDOWN, SSL_SENT_SHUTDOWN
    int TLSEXT_NAMETYPE_host_name
    unsigned int SSL_CONF_FLAG_FILE, SSL_CONF_FLAG_SERVER, SSL_CONF_FLAG_CLIENT
    unsigned int SSL_CONF_FLAG_CERTIFICATE, SSL_CONF_FLAG_SHOW_ERRORS
    int SSL_CONF_TYPE_FILE, SSL_CONF_TYPE_DIR
    int SSL_MAX_SID_CTX_LENGTH

    # the reasons ngx_ssl_connection_error() logs at the connection's level (info for clients),
    # those OpenSSL 3 defines
    int SSL_R_BAD_CHANGE_CIPHER_SPEC, SSL_R_NO_SUITABLE_KEY_SHARE, SSL_R_BAD_KEY_SHARE
    int SSL_R_BAD_EXTENSION, SSL_R_BAD_DIGEST_LENGTH, SSL_R_MISSING_SIGALGS_EXTENSION
    int SSL_R_BAD_PACKET_LENGTH, SSL_R_NO_SUITABLE_SIGNATURE_ALGORITHM, SSL_R_BAD_KEY_UPDATE
    int SSL_R_BLOCK_CIPHER_PAD_IS_WRONG, SSL_R_CCS_RECEIVED_EARLY
    int SSL_R_DATA_BETWEEN_CCS_AND_FINISHED, SSL_R_DATA_LENGTH_TOO_LONG
    int SSL_R_DIGEST_CHECK_FAILED, SSL_R_ENCRYPTED_LENGTH_TOO_LONG
    int SSL_R_ERROR_IN_RECEIVED_CIPHER_LIST, SSL_R_EXCESSIVE_MESSAGE_SIZE
    int SSL_R_GOT_A_FIN_BEFORE_A_CCS, SSL_R_HTTPS_PROXY_REQUEST, SSL_R_HTTP_REQUEST
    int SSL_R_LENGTH_MISMATCH, SSL_R_LENGTH_TOO_SHORT, SSL_R_NO_RENEGOTIATION
    int SSL_R_NO_CIPHERS_SPECIFIED, SSL_R_BAD_CIPHER, SSL_R_NO_COMPRESSION_SPECIFIED
    int SSL_R_NO_SHARED_CIPHER, SSL_R_PACKET_LENGTH_TOO_LONG, SSL_R_INVALID_ALERT
    int SSL_R_RECORD_LENGTH_MISMATCH, SSL_R_CLIENTHELLO_TLSEXT, SSL_R_PARSE_TLSEXT
    int SSL_R_CALLBACK_FAILED, SSL_R_NO_APPLICATION_PROTOCOL, SSL_R_UNEXPECTED_MESSAGE
    int SSL_R_UNEXPECTED_RECORD, SSL_R_UNKNOWN_ALERT_TYPE, SSL_R_UNKNOWN_PROTOCOL
    int SSL_R_UNSUPPORTED_PROTOCOL, SSL_R_WRONG_VERSION_NUMBER, SSL_R_BAD_LENGTH
    int SSL_R_DECRYPTION_FAILED_OR_BAD_RECORD_MAC, SSL_R_APPLICATION_DATA_AFTER_CLOSE_NOTIFY
    int SSL_R_BAD_LEGACY_VERSION, SSL_R_MIXED_HANDSHAKE_AND_NON_HANDSHAKE_DATA
    int SSL_R_RECORD_TOO_SMALL, SSL_R_SSL3_SESSION_ID_TOO_LONG, SSL_R_BAD_ECPOINT
    int SSL_R_RENEGOTIATE_EXT_TOO_LONG, SSL_R_RENEGOTIATION_ENCODING_ERR
    int SSL_R_RENEGOTIATION_MISMATCH, SSL_R_UNSAFE_LEGACY_RENEGOTIATION_DISABLED
    int SSL_R_SCSV_RECEIVED_WHEN_RENEGOTIATING, SSL_R_INAPPROPRIATE_FALLBACK
    int SSL_R_NO_SHARED_SIGNATURE_ALGORITHMS, SSL_R_CERT_CB_ERROR, SSL_R_VERSION_TOO_LOW
    int SSL_R_TOO_MANY_WARN_ALERTS, SSL_R_BAD_RECORD_TYPE
    int SSL_AD_REASON_OFFSET

    const SSL_METHOD *TLS_server_method()
    const SSL_METHOD *TLS_client_method()

    # --- contexts ---
    SSL_CTX *SSL_CTX_new(const SSL_METHOD *meth)
    void SSL_CTX_free(SSL_CTX *ctx)
    int SSL_CTX_up_ref(SSL_CTX *ctx)
    uint64_t SSL_CTX_set_options(SSL_CTX *ctx, uint64_t op)
    uint64_t SSL_CTX_clear_options(SSL_CTX *ctx, uint64_t op)
    uint64_t SSL_CTX_get_options(const SSL_CTX *ctx)
    long SSL_CTX_set_mode(SSL_CTX *ctx, long mode)
    int SSL_CTX_set_min_proto_version(SSL_CTX *ctx, int version)
    int SSL_CTX_set_max_proto_version(SSL_CTX *ctx, int version)
    long SSL_CTX_set_read_ahead(SSL_CTX *ctx, long yes)
    void SSL_CTX_set_default_read_buffer_len(SSL_CTX *ctx, size_t len)
    int SSL_CTX_set_cipher_list(SSL_CTX *ctx, const char *s)
    int SSL_CTX_use_certificate(SSL_CTX *ctx, X509 *x)
    long SSL_CTX_set0_chain(SSL_CTX *ctx, OPENSSL_STACK *sk)
    int SSL_CTX_use_PrivateKey(SSL_CTX *ctx, EVP_PKEY *pkey)
    void SSL_CTX_set_verify(SSL_CTX *ctx, int mode,
                            int (*cb)(int, X509_STORE_CTX *) noexcept)
    int SSL_CTX_get_verify_mode(const SSL_CTX *ctx)
    int SSL_CTX_get_verify_depth(const SSL_CTX *ctx)
    void SSL_CTX_set_verify_depth(SSL_CTX *ctx, int depth)
    int SSL_CTX_load_verify_locations(SSL_CTX *ctx, const char *CAfile, const char *CApath)
    int SSL_CTX_set_default_verify_paths(SSL_CTX *ctx)
    stack_st_X509_NAME *SSL_load_client_CA_file(const char *file)
    void SSL_CTX_set_client_CA_list(SSL_CTX *ctx, stack_st_X509_NAME *name_list)
    stack_st_X509_NAME *SSL_CTX_get_client_CA_list(const SSL_CTX *s)
    X509_STORE *SSL_CTX_get_cert_store(const SSL_CTX *ctx)
    long SSL_CTX_set_tmp_dh(SSL_CTX *ctx, DH *dh)
    int SSL_CTX_set1_curves_list(SSL_CTX *ctx, const char *s)
    long SSL_CTX_set_session_cache_mode(SSL_CTX *ctx, long mode)
    long SSL_CTX_sess_set_cache_size(SSL_CTX *ctx, long size)
    long SSL_CTX_set_timeout(SSL_CTX *ctx, long t)
    long SSL_CTX_get_timeout(const SSL_CTX *ctx)
    int SSL_CTX_set_session_id_context(SSL_CTX *ctx, const unsigned char *sid_ctx,
                                       unsigned int sid_ctx_len)
    void SSL_CTX_sess_set_new_cb(SSL_CTX *ctx, int (*cb)(SSL *, SSL_SESSION *) noexcept)
    void SSL_CTX_sess_set_get_cb(
        SSL_CTX *ctx,
        SSL_SESSION *(*cb)(SSL *, const unsigned char *, int, int *) noexcept)
    void SSL_CTX_sess_set_remove_cb(SSL_CTX *ctx,
                                    void (*cb)(SSL_CTX *, SSL_SESSION *) noexcept)
    int SSL_CTX_remove_session(SSL_CTX *ctx, SSL_SESSION *c)
    int SSL_CTX_set_tlsext_ticket_key_evp_cb(
        SSL_CTX *ctx,
        int (*fp)(SSL *, unsigned char *, unsigned char *, EVP_CIPHER_CTX *, EVP_MAC_CTX *,
                  int) noexcept)
    void SSL_CTX_set_alpn_select_cb(
        SSL_CTX *ctx,
        int (*cb)(SSL *, const unsigned char **, unsigned char *, const unsigned char *,
                  unsigned int, void *) noexcept,
        void *arg)
    int SSL_select_next_proto(unsigned char **out, unsigned char *outlen,
                              const unsigned char *server, unsigned int server_len,
                              const unsigned char *client, unsigned int client_len)
    long SSL_CTX_set_tlsext_servername_callback(SSL_CTX *ctx,
                                                int (*cb)(SSL *, int *, void *) noexcept)
    long SSL_CTX_set_tlsext_servername_arg(SSL_CTX *ctx, void *arg)
    int SSL_CTX_get_ex_new_index(long argl, void *argp, void *new_func, void *dup_func,
                                 CRYPTO_EX_free *free_func)
    int SSL_CTX_set_ex_data(SSL_CTX *ctx, int idx, void *data)
    void *SSL_CTX_get_ex_data(const SSL_CTX *ctx, int idx)

    SSL_CONF_CTX *SSL_CONF_CTX_new()
    void SSL_CONF_CTX_free(SSL_CONF_CTX *cctx)
    unsigned int SSL_CONF_CTX_set_flags(SSL_CONF_CTX *cctx, unsigned int flags)
    void SSL_CONF_CTX_set_ssl_ctx(SSL_CONF_CTX *cctx, SSL_CTX *ctx)
    int SSL_CONF_cmd(SSL_CONF_CTX *cctx, const char *cmd, const char *value)
    int SSL_CONF_cmd_value_type(SSL_CONF_CTX *cctx, const char *cmd)
    int SSL_CONF_CTX_finish(SSL_CONF_CTX *cctx)

    # --- connections ---
    SSL *SSL_new(SSL_CTX *ctx)
    void SSL_free(SSL *ssl)
    int SSL_set_fd(SSL *s, int fd)
    void SSL_set_accept_state(SSL *s)
    void SSL_set_connect_state(SSL *s)
    uint64_t SSL_set_options(SSL *s, uint64_t op)
    uint64_t SSL_clear_options(SSL *s, uint64_t op)
    uint64_t SSL_get_options(const SSL *s)
    long SSL_set_mode(SSL *s, long mode)
    int SSL_do_handshake(SSL *s)
    int SSL_read_ex(SSL *ssl, void *buf, size_t num, size_t *readbytes)
    int SSL_write_ex(SSL *s, const void *buf, size_t num, size_t *written)
    int SSL_pending(const SSL *s)
    int SSL_has_pending(const SSL *s)
    int SSL_get_error(const SSL *s, int ret_code)
    int SSL_shutdown(SSL *s)
    int SSL_get_shutdown(const SSL *ssl)
    void SSL_set_shutdown(SSL *ssl, int mode)
    void SSL_set_quiet_shutdown(SSL *ssl, int mode)
    int SSL_in_init(const SSL *s)
    int SSL_is_init_finished(const SSL *s)
    int SSL_session_reused(const SSL *s)
    int SSL_version(const SSL *ssl)
    const char *SSL_get_version(const SSL *s)
    const SSL_CIPHER *SSL_get_current_cipher(const SSL *s)
    const char *SSL_CIPHER_get_name(const SSL_CIPHER *c)
    long SSL_get_verify_result(const SSL *ssl)
    X509 *SSL_get1_peer_certificate(const SSL *s)
    SSL_SESSION *SSL_get0_session(const SSL *s)
    SSL_SESSION *SSL_get1_session(SSL *ssl)
    int SSL_set_session(SSL *to, SSL_SESSION *session)
    void SSL_SESSION_free(SSL_SESSION *ses)
    const unsigned char *SSL_SESSION_get_id(const SSL_SESSION *s, unsigned int *len)
    int i2d_SSL_SESSION(const SSL_SESSION *input, unsigned char **pp)
    SSL_SESSION *d2i_SSL_SESSION(SSL_SESSION **a, const unsigned char **pp, long length)
    const char *SSL_get_servername(const SSL *s, const int type)
    SSL_CTX *SSL_set_SSL_CTX(SSL *ssl, SSL_CTX *ctx)
    SSL_CTX *SSL_get_SSL_CTX(const SSL *ssl)
    void SSL_set_verify(SSL *s, int mode, int (*cb)(int, X509_STORE_CTX *) noexcept)
    void SSL_set_verify_depth(SSL *s, int depth)
    int SSL_get_verify_mode(const SSL *s)
    int SSL_is_server(const SSL *s)
    long SSL_set_tlsext_host_name(SSL *s, const char *name)
    int SSL_set1_host(SSL *s, const char *hostname)
    X509_VERIFY_PARAM *SSL_get0_param(SSL *ssl)
    void SSL_get0_alpn_selected(const SSL *ssl, const unsigned char **data, unsigned int *len)
    int SSL_get_ex_new_index(long argl, void *argp, void *new_func, void *dup_func,
                             CRYPTO_EX_free *free_func)
    int SSL_set_ex_data(SSL *ssl, int idx, void *data)
    void *SSL_get_ex_data(const SSL *ssl, int idx)


cdef extern from "<openssl/err.h>":
    int ERR_TXT_STRING
    int ERR_LIB_X509
    void ERR_clear_error()
    unsigned long ERR_peek_error()
    unsigned long ERR_peek_last_error()
    unsigned long ERR_get_error()
    unsigned long ERR_get_error_all(const char **file, int *line, const char **func,
                                    const char **data, int *flags)
    void ERR_error_string_n(unsigned long e, char *buf, size_t len)
    int ERR_GET_REASON(unsigned long errcode)
    int ERR_GET_LIB(unsigned long errcode)


cdef extern from "<openssl/bio.h>":
    BIO *BIO_new_file(const char *filename, const char *mode)
    BIO *BIO_new(const BIO_METHOD *type)
    const BIO_METHOD *BIO_s_mem()
    int BIO_free(BIO *a)
    int BIO_reset(BIO *b)
    long BIO_get_mem_data(BIO *b, char **pp)


cdef extern from "<openssl/pem.h>":
    X509 *PEM_read_bio_X509_AUX(BIO *bp, X509 **x, pem_password_cb *cb, void *u)
    X509 *PEM_read_bio_X509(BIO *bp, X509 **x, pem_password_cb *cb, void *u)
    EVP_PKEY *PEM_read_bio_PrivateKey(BIO *bp, EVP_PKEY **x, pem_password_cb *cb, void *u)
    DH *PEM_read_bio_DHparams(BIO *bp, DH **x, pem_password_cb *cb, void *u)
    int PEM_write_bio_X509(BIO *bp, X509 *x)
    int PEM_R_NO_START_LINE
    int ERR_LIB_PEM


cdef extern from "<openssl/x509.h>":
    int X509_V_OK
    int X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT, X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN
    int X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT, X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY
    int X509_V_ERR_CERT_UNTRUSTED, X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE
    unsigned long X509_V_FLAG_CRL_CHECK, X509_V_FLAG_CRL_CHECK_ALL
    int X509_FILETYPE_PEM
    unsigned long XN_FLAG_RFC2253
    int X509_R_KEY_VALUES_MISMATCH
    void X509_free(X509 *a)
    X509_NAME *X509_get_subject_name(const X509 *a)
    X509_NAME *X509_get_issuer_name(const X509 *a)
    int X509_NAME_print_ex(BIO *out, const X509_NAME *nm, int indent, unsigned long flags)
    int X509_NAME_digest(const X509_NAME *data, const EVP_MD *type, unsigned char *md,
                         unsigned int *len)
    ASN1_INTEGER *X509_get_serialNumber(X509 *x)
    int X509_digest(const X509 *data, const EVP_MD *type, unsigned char *md, unsigned int *len)
    const char *X509_verify_cert_error_string(long n)
    X509_LOOKUP *X509_STORE_add_lookup(X509_STORE *v, X509_LOOKUP_METHOD *m)
    X509_LOOKUP_METHOD *X509_LOOKUP_file()
    int X509_LOOKUP_load_file(X509_LOOKUP *ctx, const char *name, long type)
    int X509_STORE_set_flags(X509_STORE *ctx, unsigned long flags)
    int X509_VERIFY_PARAM_set1_ip_asc(X509_VERIFY_PARAM *param, const char *ipasc)
    int i2a_ASN1_INTEGER(BIO *bp, const ASN1_INTEGER *a)


cdef extern from "<openssl/evp.h>":
    int EVP_MAX_MD_SIZE
    const EVP_MD *EVP_sha1()
    const EVP_CIPHER *EVP_aes_128_cbc()
    const EVP_CIPHER *EVP_aes_256_cbc()
    int EVP_CIPHER_get_iv_length(const EVP_CIPHER *cipher)
    int EVP_EncryptInit_ex(EVP_CIPHER_CTX *ctx, const EVP_CIPHER *cipher, ENGINE *impl,
                           const unsigned char *key, const unsigned char *iv)
    int EVP_DecryptInit_ex(EVP_CIPHER_CTX *ctx, const EVP_CIPHER *cipher, ENGINE *impl,
                           const unsigned char *key, const unsigned char *iv)
    int EVP_MAC_CTX_set_params(EVP_MAC_CTX *ctx, const OSSL_PARAM *params)
    void EVP_PKEY_free(EVP_PKEY *pkey)
    ctypedef struct EVP_MD_CTX
    EVP_MD_CTX *EVP_MD_CTX_new()
    void EVP_MD_CTX_free(EVP_MD_CTX *ctx)
    int EVP_DigestInit_ex(EVP_MD_CTX *ctx, const EVP_MD *type, ENGINE *impl)
    int EVP_DigestUpdate(EVP_MD_CTX *ctx, const void *d, size_t cnt)
    int EVP_DigestFinal_ex(EVP_MD_CTX *ctx, unsigned char *md, unsigned int *s)


cdef extern from "<openssl/params.h>":
    OSSL_PARAM OSSL_PARAM_construct_octet_string(const char *key, void *buf, size_t bsize)
    OSSL_PARAM OSSL_PARAM_construct_utf8_string(const char *key, char *buf, size_t bsize)
    OSSL_PARAM OSSL_PARAM_construct_end()


cdef extern from "<openssl/core_names.h>":
    const char *OSSL_MAC_PARAM_KEY
    const char *OSSL_MAC_PARAM_DIGEST


cdef extern from "<openssl/dh.h>":
    void DH_free(DH *dh)


cdef extern from "<openssl/rand.h>":
    int RAND_bytes(unsigned char *buf, int num)


cdef extern from "<openssl/crypto.h>":
    void OPENSSL_free(void *addr)
    void OPENSSL_cleanse(void *ptr, size_t len)
    int OPENSSL_sk_num(const OPENSSL_STACK *st)
    void *OPENSSL_sk_value(const OPENSSL_STACK *st, int i)
    OPENSSL_STACK *OPENSSL_sk_new_null()
    int OPENSSL_sk_push(OPENSSL_STACK *st, const void *data)
    void OPENSSL_sk_free(OPENSSL_STACK *st)


cdef extern from "<openssl/crypto.h>":
    const char *OpenSSL_version(int t)
    int OPENSSL_VERSION
    const char *OPENSSL_VERSION_TEXT
