#if canImport(Glibc)
import Glibc
#endif
import BlockCore
import Synchronization

/// A block driver that keeps its bytes in memory, counts its operations and fails or delays them
/// on request: the storage under unit tests of everything above the drivers.
public final class MemoryDriver: BlockDriver {
    /// An operation whose calls are counted and can be failed or delayed.
    public enum Operation: Sendable, CaseIterable {
        case read, write, flush
    }

    private struct State {
        var bytes: [UInt8]
        var calls: [Operation: Int] = [:]
        var failures: [Operation: [(call: Int, errno: Int32)]] = [:]
        var delays: [Operation: UInt64] = [:]
    }

    public let driverName = "memory"
    public let features: DriverFeatures
    private let state: Mutex<State>

    /// A device of `length` bytes, all zero.
    public init(length: Int, features: DriverFeatures = DriverFeatures()) {
        self.state = Mutex(State(bytes: [UInt8](repeating: 0, count: length)))
        self.features = features
    }

    public var length: UInt64 { state.withLock { UInt64($0.bytes.count) } }

    /// A copy of the device's bytes.
    public var contents: [UInt8] { state.withLock { $0.bytes } }

    /// How many times `operation` was called (failed calls included).
    public func calls(_ operation: Operation) -> Int { state.withLock { $0.calls[operation, default: 0] } }

    /// Makes the `nth` call of `operation` from now (1: the next one) fail with `errno`.
    public func fail(_ operation: Operation, nth: Int = 1, errno: Int32 = EIO) {
        state.withLock { state in
            let call = state.calls[operation, default: 0] + nth
            state.failures[operation, default: []].append((call, errno))
        }
    }

    /// Makes every later call of `operation` take at least `nanoseconds` longer.
    public func delay(_ operation: Operation, nanoseconds: UInt64) {
        state.withLock { $0.delays[operation] = nanoseconds }
    }

    /// Counts a call; returns its delay and the error it must fail with, if any.
    private func begin(_ operation: Operation) -> (delay: UInt64, error: Int32?) {
        state.withLock { state in
            let call = state.calls[operation, default: 0] + 1
            state.calls[operation] = call
            var error: Int32?
            if let index = state.failures[operation]?.firstIndex(where: { $0.call == call }) {
                error = state.failures[operation]![index].errno
                state.failures[operation]!.remove(at: index)
            }
            return (state.delays[operation] ?? 0, error)
        }
    }

    private func run(_ operation: Operation, _ name: String) throws(BlockError) {
        let (delay, error) = begin(operation)
        if delay > 0 {
            var request = timespec(tv_sec: Int(delay / 1_000_000_000), tv_nsec: Int(delay % 1_000_000_000))
            var remaining = timespec()
            while nanosleep(&request, &remaining) != 0 && errno == EINTR { request = remaining }
        }
        if let error { throw BlockError(errno: error, "injected \(name) failure") }
    }

    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(BlockError) {
        try run(.read, "read")
        state.withLock { state in
            state.bytes.withUnsafeBytes { bytes in
                buffer.copyMemory(from: UnsafeRawBufferPointer(rebasing: bytes[Int(offset)..<Int(offset) + buffer.count]))
            }
        }
    }

    public func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64, fua: Bool) throws(BlockError) {
        try run(.write, "write")
        state.withLock { state in
            state.bytes.replaceSubrange(Int(offset)..<Int(offset) + buffer.count, with: buffer)
        }
    }

    public func writeZeroes(at offset: UInt64, length: UInt64, flags: ZeroFlags) throws(BlockError) {
        try run(.write, "zero-write")
        state.withLock { state in
            state.bytes.replaceSubrange(Int(offset)..<Int(offset + length), with: repeatElement(0, count: Int(length)))
        }
    }

    public func flush() throws(BlockError) {
        try run(.flush, "flush")
    }

    public func resize(to length: UInt64) throws(BlockError) {
        state.withLock { state in
            if Int(length) < state.bytes.count {
                state.bytes.removeSubrange(Int(length)...)
            } else {
                state.bytes += repeatElement(0, count: Int(length) - state.bytes.count)
            }
        }
    }
}
