#if canImport(Glibc)
import Glibc
#endif
import BlockCore
import Synchronization
import LogOptionsClock

/// The `null-co` and `null-aio` drivers: a device of a given size that discards writes and reads as
/// zeroes (with `read-zeroes=on`) or as whatever the buffer held.
public final class NullDriver: BlockDriver {
    public let driverName: String
    public let features: DriverFeatures
    private let size: Atomic<UInt64>
    public var length: UInt64 { size.load(ordering: .relaxed) }
    private let latency: timespec?
    private let readZeroes: Bool

    /// Creates a null device.
    public init(driverName: String, length: UInt64, latencyNanoseconds: UInt64, readZeroes: Bool) {
        self.driverName = driverName
        self.size = Atomic(length)
        self.readZeroes = readZeroes
        self.latency = latencyNanoseconds == 0 ? nil
            : timespec(tv_sec: Int(latencyNanoseconds / 1_000_000_000), tv_nsec: Int(latencyNanoseconds % 1_000_000_000))
        var features = DriverFeatures()
        features.fua = .native
        features.fastZero = true
        features.discard = true
        features.needsFlush = false
        features.blockStatus = readZeroes
        self.features = features
    }

    @inline(__always)
    private func delay() {
        guard var request = latency else { return }
        var remaining = timespec()
        while nanosleep(&request, &remaining) != 0 && errno == EINTR { request = remaining }
    }

    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(BlockError) {
        delay()
        if readZeroes, let base = buffer.baseAddress { memset(base, 0, buffer.count) }
    }

    public func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64, fua: Bool) throws(BlockError) { delay() }
    public func writeZeroes(at offset: UInt64, length: UInt64, flags: ZeroFlags) throws(BlockError) { delay() }
    public func discard(at offset: UInt64, length: UInt64) throws(BlockError) {}
    public func flush() throws(BlockError) { delay() }

    public func resize(to newLength: UInt64) throws(BlockError) {
        size.store(newLength, ordering: .relaxed)
    }

    public func blockStatus(at offset: UInt64, length: UInt64) throws(BlockError) -> [Extent] {
        readZeroes ? [Extent(length: length, zero: true, hole: false)] : [.data(length)]
    }

    /// The opener for `null-co` or `null-aio`.
    public static func opener(for name: String) -> DriverOpener {
        { options, context throws(OptionError) in
            let size = try options.size("size") ?? (1 << 30)
            let latency = try options.unsigned("latency-ns") ?? 0
            let readZeroes = try options.bool("read-zeroes") ?? false
            return OpenedDriver(driver: NullDriver(driverName: name, length: size, latencyNanoseconds: latency, readZeroes: readZeroes))
        }
    }
}
