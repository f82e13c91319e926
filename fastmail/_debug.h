#ifndef FASTMAIL_DEBUG
#define FASTMAIL_DEBUG 0
#endif
