/* Included by the source that examples/xcache_capi.c compiles at run time, from an
 * include dir: its content is part of the result's identity (edit it, run the example
 * again: it compiles again). */
#define SCALE 2.0
