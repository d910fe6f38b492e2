#if canImport(Glibc)
import Glibc
#endif

/// A driver that runs reads and writes asynchronously, many at a time (a remote server): batch
/// engines hand it a batch's requests at once instead of running them one after the other.
public protocol AsyncTarget: AnyObject, Sendable {
    /// Starts a read of `length` bytes at `offset` into `buffer`; the result (the bytes transferred or
    /// `-errno`) is posted to `completions` under `token`. The buffer stays untouched by the caller until then.
    func submitRead(into buffer: UnsafeMutableRawPointer, length: Int, at offset: UInt64, token: Int, completions: AsyncCompletions)
    /// Starts a write (durable on completion when `fua`); the result is posted like a read's.
    func submitWrite(from buffer: UnsafeRawPointer, length: Int, at offset: UInt64, fua: Bool, token: Int, completions: AsyncCompletions)
}

/// Results of asynchronous requests, posted from any thread and collected by the one thread that
/// waits for them; the waiter is woken once, when the last result it waits for arrives.
public final class AsyncCompletions: @unchecked Sendable {
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let condition = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    private var results: [(token: Int, result: Int32)] = []
    private var wanted = Int.max

    /// An empty set of results.
    public init() {
        pthread_mutex_init(mutex, nil)
        pthread_cond_init(condition, nil)
        results.reserveCapacity(64)
    }

    deinit {
        pthread_cond_destroy(condition)
        pthread_mutex_destroy(mutex)
        condition.deallocate()
        mutex.deallocate()
    }

    /// Posts one result: the bytes transferred (0 when there are none) or `-errno`.
    public func post(token: Int, result: Int32) {
        pthread_mutex_lock(mutex)
        results.append((token, result))
        let wake = results.count >= wanted
        pthread_mutex_unlock(mutex)
        if wake { pthread_cond_signal(condition) }
    }

    /// Waits until `count` results have been posted since the last wait, then hands them over.
    public func wait(for count: Int, _ body: (_ token: Int, _ result: Int32) -> Void) {
        pthread_mutex_lock(mutex)
        wanted = count
        while results.count < count { pthread_cond_wait(condition, mutex) }
        wanted = Int.max
        let taken = results
        results.removeAll(keepingCapacity: true)
        pthread_mutex_unlock(mutex)
        for entry in taken { body(entry.token, entry.result) }
    }

    /// Waits for the one result of a synchronous call and returns it.
    public func waitForOne() -> Int32 {
        var outcome: Int32 = 0
        wait(for: 1) { _, result in outcome = result }
        return outcome
    }
}
