/* rng.h: the small counter-based PRNG behind every random image op (splitmix64).
 *
 * Each image owns a 64-bit state derived from its seed and a per-op domain constant, so what
 * an image gets depends on its seed alone: never on the thread that runs it, nor on the batch
 * it sits in. splitmix64 (Steele, Lea, Flood 2014; the seeder of xoshiro) passes BigCrush and
 * is plenty for drawing a few dozen numbers per image. */
#ifndef PV_RNG_H
#define PV_RNG_H

#include <stdint.h>

/* domains: the same seed drives unrelated streams in different ops */
#define PV_RNG_RANDAUGMENT 0x52414e44415547ULL /* "RANDAUG" */
#define PV_RNG_RRC 0x5252435f43524fULL         /* "RRC_CRO" */

static inline uint64_t pv_rng_next(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

static inline uint64_t pv_rng_init(uint64_t seed, uint64_t domain) {
    uint64_t s = seed ^ domain;
    (void)pv_rng_next(&s); /* one scramble so that nearby seeds start far apart */
    return s;
}

/* uniform double in [0, 1) with 53 random bits */
static inline double pv_rng_uniform(uint64_t *s) { return (double)(pv_rng_next(s) >> 11) * 0x1.0p-53; }

/* uniform integer in [0, n), n >= 1 (Lemire's multiply-shift on 32 bits; bias < n / 2^32) */
static inline uint32_t pv_rng_below(uint64_t *s, uint32_t n) {
    return (uint32_t)(((pv_rng_next(s) >> 32) * (uint64_t)n) >> 32);
}

#endif
