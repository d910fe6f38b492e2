// Atomic operations on plain 64-bit words in raw memory (dirty bitmaps, reader counts), which
// Swift's Synchronization module offers only for values stored inside objects.
#ifndef CBLOCKSHIMS_ATOMIC_WORDS_H
#define CBLOCKSHIMS_ATOMIC_WORDS_H

#include <stdint.h>

/// Loads a word (relaxed).
static inline uint64_t blk_word_load(const uint64_t *word) { return __atomic_load_n(word, __ATOMIC_RELAXED); }
/// Stores a word (relaxed).
static inline void blk_word_store(uint64_t *word, uint64_t value) { __atomic_store_n(word, value, __ATOMIC_RELAXED); }
/// ORs `bits` into a word (relaxed).
static inline void blk_word_or(uint64_t *word, uint64_t bits) { __atomic_fetch_or(word, bits, __ATOMIC_RELAXED); }
/// Clears `bits` in a word (relaxed).
static inline void blk_word_and_not(uint64_t *word, uint64_t bits) { __atomic_fetch_and(word, ~bits, __ATOMIC_RELAXED); }
/// Adds to a counter (relaxed: statistics).
static inline void blk_word_add(uint64_t *word, uint64_t value) { __atomic_fetch_add(word, value, __ATOMIC_RELAXED); }
/// Adds to a counter, sequentially consistent (reader counts of a published table).
static inline void blk_word_add_seq(uint64_t *word, uint64_t value) { __atomic_fetch_add(word, value, __ATOMIC_SEQ_CST); }
/// Subtracts from a counter, with release order.
static inline void blk_word_sub_release(uint64_t *word, uint64_t value) { __atomic_fetch_sub(word, value, __ATOMIC_RELEASE); }
/// Loads a counter, sequentially consistent.
static inline uint64_t blk_word_load_seq(const uint64_t *word) { return __atomic_load_n(word, __ATOMIC_SEQ_CST); }

#endif
