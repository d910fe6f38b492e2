#if canImport(Glibc)
import Glibc
#endif

/// A mutex with a condition variable whose timed waits run on the monotonic clock: for threads that
/// must sleep until a deadline or until someone changes what they wait for (throttling, pausing).
public final class MonotonicCondition: @unchecked Sendable {
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let condition = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)

    /// A new unlocked condition.
    public init() {
        pthread_mutex_init(mutex, nil)
        var attributes = pthread_condattr_t()
        pthread_condattr_init(&attributes)
        pthread_condattr_setclock(&attributes, CLOCK_MONOTONIC)
        pthread_cond_init(condition, &attributes)
        pthread_condattr_destroy(&attributes)
    }

    deinit {
        pthread_cond_destroy(condition)
        pthread_mutex_destroy(mutex)
        condition.deallocate()
        mutex.deallocate()
    }

    /// Runs `body` with the mutex held.
    public func withLock<T, E: Error>(_ body: () throws(E) -> T) throws(E) -> T {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body()
    }

    /// Takes the mutex (for holders that span more than one closure).
    public func lock() {
        pthread_mutex_lock(mutex)
    }

    /// Releases the mutex.
    public func unlock() {
        pthread_mutex_unlock(mutex)
    }

    /// Waits (mutex held) until signalled.
    public func wait() {
        pthread_cond_wait(condition, mutex)
    }

    /// Waits (mutex held) until signalled or until `deadline` (MonotonicClock nanoseconds).
    public func wait(until deadline: UInt64) {
        var time = timespec(tv_sec: Int(deadline / 1_000_000_000), tv_nsec: Int(deadline % 1_000_000_000))
        pthread_cond_timedwait(condition, mutex, &time)
    }

    /// Wakes every waiter.
    public func broadcast() {
        pthread_cond_broadcast(condition)
    }
}
