#if canImport(Glibc)
import Glibc
#endif
import LogOptionsClock

/// One file's flushes from many threads (connections), shared: a flush is answered by the first
/// `fdatasync` that begins after it was asked for, and one `fdatasync` answers every flush that asked
/// while the one before it ran.
///
/// A flush must cover every write that completed before it was asked for, so an `fdatasync` already
/// running does not answer it (it may have begun before those writes); the next one does, and it
/// begins as soon as the running one ends, for everyone who asked meanwhile. Each flush gets the
/// result of that `fdatasync`, not of a later one: after a failed `fdatasync` the kernel reports the
/// error only once, so a later success would hide the loss.
///
/// `@unchecked Sendable`: `state` is only touched with `condition`'s mutex held.
final class SharedFlush: @unchecked Sendable {
    private struct State {
        /// Generations of `fdatasync`: how many began, how many ended.
        var started: UInt64 = 0
        var finished: UInt64 = 0
        var running = false
        /// The latest failed generations and their errno (failures are rare; a few are kept).
        var failures: [(generation: UInt64, errno: Int32)] = []
    }

    private let condition = MonotonicCondition()
    private var state = State()

    /// Failed generations remembered for waiters that have not woken yet.
    private static let keptFailures = 16

    /// Runs `sync` (an `fdatasync`, returning 0 or an errno) or waits for one that another thread
    /// began after this call; returns that run's result.
    func run(_ sync: () -> Int32) -> Int32 {
        condition.lock()
        defer { condition.unlock() }
        let needed = state.started + 1
        while true {
            if state.finished >= needed {
                if let failure = state.failures.first(where: { $0.generation == needed }) { return failure.errno }
                // Past the failures kept: that run's result is no longer known, so it counts as failed.
                if state.failures.count == SharedFlush.keptFailures, needed < state.failures[0].generation { return EIO }
                return 0
            }
            if !state.running {
                // `needed` is the next generation: nobody began it yet, so it is this thread's to run.
                state.started = needed
                state.running = true
                condition.unlock()
                let result = sync()
                condition.lock()
                state.running = false
                state.finished = needed
                if result != 0 {
                    state.failures.append((needed, result))
                    if state.failures.count > SharedFlush.keptFailures { state.failures.removeFirst() }
                }
                condition.broadcast()
                return result
            }
            condition.wait()
        }
    }
}
