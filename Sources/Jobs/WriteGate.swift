#if canImport(Glibc)
import Glibc
#endif
import LogOptionsClock

/// Clients' writes pass through together; a job closes the gate to act alone (the mirror's final
/// copy and pivot). Closing waits for the writes inside and holds new ones at the gate, so a steady
/// stream of writes cannot keep the job out.
final class WriteGate: @unchecked Sendable {
    private let lock = MonotonicCondition()
    private var inside = 0
    private var closed = false

    /// A write enters (waits while the gate is closed).
    func enter() {
        lock.lock()
        while closed { lock.wait() }
        inside += 1
        lock.unlock()
    }

    /// A write leaves.
    func leave() {
        lock.lock()
        inside -= 1
        if inside == 0 { lock.broadcast() }
        lock.unlock()
    }

    /// Closes the gate and waits until no write is inside.
    func close() {
        lock.lock()
        while closed { lock.wait() }
        closed = true
        while inside > 0 { lock.wait() }
        lock.unlock()
    }

    /// Opens the gate again.
    func open() {
        lock.lock()
        closed = false
        lock.broadcast()
        lock.unlock()
    }
}
