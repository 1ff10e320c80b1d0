/* The C ABI under threads: N threads compile one source at once (one compile, one
 * library, every handle with the same path), each also a source of its own (distinct
 * keys), then check that errors are per thread and that bad arguments are refused.
 * Prints "ok" and exits 0 on success. Argument: the cache's base dir. */
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "xcache.h"

#define N 8

static xcache_cache *cache;
static xcache_library *shared_libs[N];
static int own_results[N];
static int error_kinds[N];

static void *worker(void *arg) {
    int i = (int)(long)arg;
    if (xcache_compile(cache, "c", "int one(void) { return 1; }", NULL, 0, NULL, 0,
                       &shared_libs[i]) != XCACHE_OK) {
        fprintf(stderr, "thread %d: %s\n", i, xcache_last_error());
        return NULL;
    }
    char src[128];
    snprintf(src, sizeof src, "int own(void) { return %d; }", 100 + i);
    xcache_library *lib = NULL;
    if (xcache_compile(cache, "c", src, NULL, 0, NULL, 0, &lib) != XCACHE_OK) {
        fprintf(stderr, "thread %d: %s\n", i, xcache_last_error());
        return NULL;
    }
    void *sym = NULL;
    xcache_library_symbol(lib, "own", &sym);
    int (*own)(void);
    *(void **)&own = sym;
    own_results[i] = own();
    xcache_library_release(lib);
    /* A per-thread error: even threads ask for a missing symbol, odd ones use a bad
     * language; each must read its own message. */
    xcache_status st;
    if (i % 2 == 0) {
        st = xcache_library_symbol(shared_libs[i], "nope", &sym);
        error_kinds[i] = st == XCACHE_ERR_MISSING_SYMBOL && strstr(xcache_last_error(), "nope");
    } else {
        xcache_library *x = NULL;
        st = xcache_compile(cache, "fortran", "", NULL, 0, NULL, 0, &x);
        error_kinds[i] = st == XCACHE_ERR_INVALID_ARGUMENT && strstr(xcache_last_error(), "fortran");
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    if (xcache_open(argv[1], &cache) != XCACHE_OK) {
        fprintf(stderr, "open: %s\n", xcache_last_error());
        return 1;
    }
    pthread_t t[N];
    for (long i = 0; i < N; i++) pthread_create(&t[i], NULL, worker, (void *)i);
    for (int i = 0; i < N; i++) pthread_join(t[i], NULL);

    int misses = 0;
    const char *first = NULL;
    for (int i = 0; i < N; i++) {
        if (!shared_libs[i]) return 1;
        bool hit;
        const char *path;
        xcache_library_hit(shared_libs[i], &hit);
        xcache_library_path(shared_libs[i], &path);
        misses += !hit;
        if (!first) first = path;
        if (strcmp(first, path) != 0) { fprintf(stderr, "paths differ\n"); return 1; }
        if (own_results[i] != 100 + i) { fprintf(stderr, "own %d\n", i); return 1; }
        if (!error_kinds[i]) { fprintf(stderr, "error of thread %d not its own\n", i); return 1; }
    }
    if (misses != 1) { fprintf(stderr, "%d compiles of one key\n", misses); return 1; }

    /* NULLs are refused with a status, never a crash. */
    xcache_library *lib = NULL;
    if (xcache_compile(NULL, "c", "", NULL, 0, NULL, 0, &lib) != XCACHE_ERR_INVALID_ARGUMENT) return 1;
    if (xcache_compile(cache, "c", "int x;", NULL, 3, NULL, 0, &lib) != XCACHE_ERR_INVALID_ARGUMENT) return 1;
    if (xcache_library_path(NULL, NULL) != XCACHE_ERR_INVALID_ARGUMENT) return 1;
    const char *rel[] = {"relative/dir"};
    if (xcache_compile(cache, "c", "int x;", NULL, 0, rel, 1, &lib) != XCACHE_ERR_INVALID_ARGUMENT) return 1;
    const char *bad_flag[] = {"-o/tmp/elsewhere.so"};
    if (xcache_compile(cache, "c", "int x;", bad_flag, 1, NULL, 0, &lib) != XCACHE_ERR_INVALID_REQUEST) return 1;
    if (xcache_library_release(NULL) != XCACHE_OK || xcache_close(NULL) != XCACHE_OK) return 1;

    /* Handles outlive their cache. */
    xcache_close(cache);
    void *sym;
    if (xcache_library_symbol(shared_libs[0], "one", &sym) != XCACHE_OK) return 1;
    int (*one)(void);
    *(void **)&one = sym;
    if (one() != 1) return 1;
    for (int i = 0; i < N; i++) xcache_library_release(shared_libs[i]);
    puts("ok");
    return 0;
}
