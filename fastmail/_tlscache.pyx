"""The shared TLS session-ID cache (nginx's `ssl_session_cache shared:NAME:SIZE`).

One zone is one anonymous shared mapping made in the master before the workers fork, so
every worker sees the same sessions (nginx's shared memory zone). Inside: a robust
process-shared mutex, a hash table of session IDs and a ring of entries. New entries go at
the ring's head; when the ring is full the oldest entries are dropped (nginx drops the
oldest too), so the zone never grows. An entry past its expiry time is dropped when looked up.
A worker that dies holding the lock leaves the zone to be emptied by the next one (the
mutex is robust; the entries may be half written). Removed and dropped sessions are zeroed:
they hold master secrets.

This module knows no OpenSSL: _tlsctx's callbacks hand it DER bytes (i2d/d2i outside the
lock, as nginx does). Zones are kept by name across reloads while the config that made them
is alive (a reload loads the new config before dropping the old one), as nginx keeps a zone
whose name and size did not change.
"""

import weakref

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int64_t
from libc.string cimport memcmp, memcpy, memset
from posix.mman cimport mmap, munmap, PROT_READ, PROT_WRITE, MAP_SHARED, MAP_ANONYMOUS


cdef extern from "<sys/mman.h>":
    void *MAP_FAILED


cdef extern from "<pthread.h>" nogil:
    ctypedef struct pthread_mutex_t:
        pass
    ctypedef struct pthread_mutexattr_t:
        pass
    int PTHREAD_PROCESS_SHARED, PTHREAD_MUTEX_ROBUST
    int pthread_mutexattr_init(pthread_mutexattr_t *attr)
    int pthread_mutexattr_destroy(pthread_mutexattr_t *attr)
    int pthread_mutexattr_setpshared(pthread_mutexattr_t *attr, int pshared)
    int pthread_mutexattr_setrobust(pthread_mutexattr_t *attr, int robust)
    int pthread_mutex_init(pthread_mutex_t *m, const pthread_mutexattr_t *attr)
    int pthread_mutex_lock(pthread_mutex_t *m)
    int pthread_mutex_unlock(pthread_mutex_t *m)
    int pthread_mutex_consistent(pthread_mutex_t *m)


cdef extern from "<errno.h>":
    int EOWNERDEAD


cdef enum:
    MAX_ID = 32
    # the largest session kept: nginx's NGX_SSL_MAX_SESSION_SIZE (a session with a client
    # certificate is ~1-2 KB)
    MAX_SESSION = 8192

cdef uint64_t MAGIC = 0x66736d6c74637a31  # "fsmltcz1"

cdef struct Hdr:
    pthread_mutex_t lock
    uint64_t magic
    uint64_t nbuckets           # a power of two
    uint64_t data_off           # from the start of the mapping
    uint64_t data_size
    uint64_t head               # where the next entry goes
    uint64_t tail               # the oldest entry
    uint64_t wrap               # when wrapped (head < tail): end of the upper run, else 0
    uint64_t count              # entries in the ring, live or removed
    uint64_t live
    uint64_t stores, hits, misses, drops


cdef struct Entry:
    uint64_t size               # the whole entry, 8-aligned
    uint64_t next               # next in the bucket's chain: offset + 1, 0 ends
    uint32_t hash
    uint16_t der_len
    uint8_t id_len
    uint8_t live                # 0 once removed: unlinked, waits for the ring to pass
    int64_t expire
    uint8_t id[MAX_ID]
    # the DER follows


cdef inline uint32_t _hash(const unsigned char *p, unsigned int n) noexcept nogil:
    cdef uint32_t h = 2166136261u   # FNV-1a: session IDs are random, lookups attacker-chosen
    cdef unsigned int i
    for i in range(n):
        h = (h ^ p[i]) * 16777619u
    return h


cdef class SessionZone:
    """A shared zone of `size` bytes named `name`; made with zone(name, size)."""

    def __cinit__(self, str name, size_t size):
        cdef pthread_mutexattr_t attr
        cdef Hdr *h
        cdef uint64_t nb = 64
        self.base = NULL
        self.name = name
        self.size = size
        if size < 8 * 4096:
            raise ValueError(f'session cache zone "{name}" is too small')
        while nb * 512 < size:       # about one bucket per two sessions' worth of ring
            nb *= 2
        self.base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0)
        if self.base == MAP_FAILED:
            self.base = NULL
            raise MemoryError(f'mmap(MAP_ANON|MAP_SHARED, {size}) failed')
        h = <Hdr *>self.base
        pthread_mutexattr_init(&attr)
        pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED)
        pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST)
        pthread_mutex_init(&h.lock, &attr)
        pthread_mutexattr_destroy(&attr)
        h.magic = MAGIC
        h.nbuckets = nb
        h.data_off = (sizeof(Hdr) + nb * sizeof(uint64_t) + 63) & ~(<uint64_t>63)
        h.data_size = (size - h.data_off) & ~(<uint64_t>7)
        _clear(h)

    def __dealloc__(self):
        if self.base != NULL:
            munmap(self.base, self.size)
            self.base = NULL

    # --- the three operations (called from OpenSSL callbacks: never raise) ------------------

    cdef int store(self, const unsigned char *sid, unsigned int sid_len,
                   const unsigned char *der, size_t der_len, long expire) noexcept:
        cdef Hdr *h = <Hdr *>self.base
        cdef uint64_t need, off
        cdef Entry *e
        cdef uint32_t hv
        if sid_len == 0 or sid_len > MAX_ID or der_len > MAX_SESSION:
            return 0
        need = (sizeof(Entry) + der_len + 7) & ~(<uint64_t>7)
        if need > h.data_size // 4:
            return 0
        hv = _hash(sid, sid_len)
        _lock(h)
        _unlink(h, _find(h, sid, sid_len, hv))      # a session stored again replaces itself
        off = _alloc(h, need)
        e = _entry(h, off)
        e.size = need
        e.hash = hv
        e.id_len = <uint8_t>sid_len
        e.der_len = <uint16_t>der_len
        e.live = 1
        e.expire = expire
        memcpy(e.id, sid, sid_len)
        memcpy(<unsigned char *>e + sizeof(Entry), der, der_len)
        e.next = _buckets(h)[hv & (h.nbuckets - 1)]
        _buckets(h)[hv & (h.nbuckets - 1)] = off + 1
        h.count += 1
        h.live += 1
        h.stores += 1
        pthread_mutex_unlock(&h.lock)
        return 1

    cdef Py_ssize_t fetch(self, const unsigned char *sid, unsigned int sid_len,
                          unsigned char *out, size_t cap, long now) noexcept:
        """The DER of a live session into `out`, its length; -1 when absent or expired."""
        cdef Hdr *h = <Hdr *>self.base
        cdef Entry *e
        cdef Py_ssize_t n = -1
        if sid_len == 0 or sid_len > MAX_ID:
            return -1
        _lock(h)
        e = _find(h, sid, sid_len, _hash(sid, sid_len))
        if e != NULL and e.expire <= now:
            _unlink(h, e)
            e = NULL
        if e != NULL and e.der_len <= cap:
            n = e.der_len
            memcpy(out, <unsigned char *>e + sizeof(Entry), n)
            h.hits += 1
        else:
            h.misses += 1
        pthread_mutex_unlock(&h.lock)
        return n

    cdef void remove(self, const unsigned char *sid, unsigned int sid_len) noexcept:
        cdef Hdr *h = <Hdr *>self.base
        if sid_len == 0 or sid_len > MAX_ID:
            return
        _lock(h)
        _unlink(h, _find(h, sid, sid_len, _hash(sid, sid_len)))
        pthread_mutex_unlock(&h.lock)

    # --- for tests and the debug log -------------------------------------------------------

    def stats(self) -> dict:
        """Counters: live sessions, entries in the ring, stores, hits, misses, drops."""
        cdef Hdr *h = <Hdr *>self.base
        _lock(h)
        out = {"live": h.live, "entries": h.count, "stores": h.stores, "hits": h.hits,
               "misses": h.misses, "drops": h.drops, "capacity": h.data_size}
        pthread_mutex_unlock(&h.lock)
        return out

    def put(self, bytes sid, bytes der, long expire) -> bool:
        """store() from Python (tests)."""
        return self.store(sid, len(sid), der, len(der), expire) == 1

    def get(self, bytes sid, long now):
        """fetch() from Python (tests): the DER, or None."""
        cdef unsigned char buf[MAX_SESSION]
        cdef Py_ssize_t n = self.fetch(sid, len(sid), buf, MAX_SESSION, now)
        return None if n < 0 else buf[:n]

    def delete(self, bytes sid) -> None:
        self.remove(sid, len(sid))

    def hold_lock(self) -> None:
        """Takes the lock and keeps it (tests: a worker dying inside the lock)."""
        _lock(<Hdr *>self.base)


# --- the ring (all under the lock) -----------------------------------------------------------

cdef inline uint64_t *_buckets(Hdr *h) noexcept nogil:
    return <uint64_t *>(<char *>h + sizeof(Hdr))


cdef inline Entry *_entry(Hdr *h, uint64_t off) noexcept nogil:
    return <Entry *>(<char *>h + h.data_off + off)


cdef void _clear(Hdr *h) noexcept nogil:
    memset(_buckets(h), 0, h.nbuckets * sizeof(uint64_t))
    memset(<char *>h + h.data_off, 0, h.data_size)
    h.head = h.tail = h.wrap = h.count = h.live = 0


cdef void _lock(Hdr *h) noexcept nogil:
    if pthread_mutex_lock(&h.lock) == EOWNERDEAD:
        # a worker died inside: its entry may be half written, start over
        _clear(h)
        pthread_mutex_consistent(&h.lock)


cdef Entry *_find(Hdr *h, const unsigned char *sid, unsigned int n, uint32_t hv) noexcept nogil:
    cdef uint64_t link = _buckets(h)[hv & (h.nbuckets - 1)]
    cdef Entry *e
    while link:
        e = _entry(h, link - 1)
        if e.hash == hv and e.id_len == n and memcmp(e.id, sid, n) == 0:
            return e
        link = e.next
    return NULL


cdef void _unlink(Hdr *h, Entry *e) noexcept nogil:
    """Takes a live entry out of its chain and zeroes its secrets; the ring frees it later."""
    cdef uint64_t *link
    cdef uint64_t me
    if e == NULL or not e.live:
        return
    me = <uint64_t>(<char *>e - (<char *>h + h.data_off)) + 1
    link = &_buckets(h)[e.hash & (h.nbuckets - 1)]
    while link[0] and link[0] != me:
        link = &_entry(h, link[0] - 1).next
    if link[0] == me:
        link[0] = e.next
    e.live = 0
    h.live -= 1
    memset(<unsigned char *>e + sizeof(Entry), 0, e.der_len)


cdef void _drop_oldest(Hdr *h) noexcept nogil:
    cdef Entry *e = _entry(h, h.tail)
    if e.live:
        _unlink(h, e)
        h.drops += 1
    h.tail += e.size
    h.count -= 1
    if h.wrap and h.tail >= h.wrap:
        h.tail = 0
        h.wrap = 0
    if h.count == 0:
        h.head = h.tail = h.wrap = 0


cdef uint64_t _alloc(Hdr *h, uint64_t need) noexcept nogil:
    """`need` contiguous bytes at the head, dropping the oldest entries to make room. Live data
    is [tail, head) when not wrapped, else [tail, wrap) and [0, head)."""
    cdef uint64_t off
    while True:
        if h.count == 0:
            h.tail = h.wrap = 0
            h.head = need
            return 0
        if h.wrap == 0:
            if h.head + need <= h.data_size:
                off = h.head
                h.head += need
                return off
            h.wrap = h.head     # the upper run ends here; continue from the bottom
            h.head = 0
        if h.head + need <= h.tail:
            off = h.head
            h.head += need
            return off
        _drop_oldest(h)


# --- zones by name (the master's registry) ---------------------------------------------------

_zones = weakref.WeakValueDictionary()


def zone(str name, size_t size) -> SessionZone:
    """The zone `name`: the live one when it has this size (kept across reload, as nginx keeps
    a zone whose name and size did not change), else a new one."""
    z = _zones.get(name)
    if z is None or (<SessionZone>z).size != size:
        z = SessionZone(name, size)
        _zones[name] = z
    return z
