#if canImport(Glibc)
import Glibc
#endif
import BlockCore
import LogOptionsClock

/// The `blkverify` filter: every write goes to both the node under `test` and the `raw` reference;
/// every read reads both and compares them. A difference is logged as an error, with the first
/// differing offset, and the read fails with `EIO` (QEMU exits the process instead). Flushes go to
/// the test node only, as in QEMU: the reference is not what is being tested.
public final class BlkverifyDriver: BlockDriver {
    public let driverName = "blkverify"
    public let features: DriverFeatures
    private let test: BlockNode
    private let reference: BlockNode
    private let nodeName: String

    /// Creates a filter comparing `test` against `reference`.
    public init(nodeName: String, test: BlockNode, reference: BlockNode) {
        self.nodeName = nodeName
        self.test = test
        self.reference = reference
        var features = DriverFeatures()
        features.fua = .emulated
        features.fastZero = test.features.fastZero && reference.features.fastZero
        features.needsFlush = test.features.needsFlush
        features.multiConnSafe = test.features.multiConnSafe && reference.features.multiConnSafe
        features.alignment = max(test.features.alignment, reference.features.alignment)
        features.maxTransfer = min(test.features.maxTransfer, reference.features.maxTransfer)
        self.features = features
    }

    public var length: UInt64 { test.length }
    public var filename: String { "blkverify:\(reference.driver.filename):\(test.driver.filename)" }

    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(BlockError) {
        try test.read(into: buffer, at: offset)
        let expected = AlignedBuffer(capacity: buffer.count)
        let bytes = UnsafeMutableRawBufferPointer(rebasing: expected.bytes[0..<buffer.count])
        try reference.read(into: bytes, at: offset)
        guard let first = BlkverifyDriver.firstDifference(UnsafeRawBufferPointer(buffer), UnsafeRawBufferPointer(bytes)) else { return }
        let message = "blkverify: node '\(nodeName)': read offset=\(offset) bytes=\(buffer.count) contents mismatch at offset "
            + "\(offset + UInt64(first)) between '\(test.name)' (test) and '\(reference.name)' (raw)"
        Log.error(message)
        throw .io(message)
    }

    public func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64, fua: Bool) throws(BlockError) {
        try both("write", at: offset) { node throws(BlockError) in try node.write(buffer, at: offset, fua: false) }
    }

    public func writeZeroes(at offset: UInt64, length: UInt64, flags: ZeroFlags) throws(BlockError) {
        var flags = flags
        flags.remove(.mayUnmap)  // both must read back as zeroes; neither may drop the range
        try both("zero-write", at: offset) { node throws(BlockError) in try node.writeZeroes(at: offset, length: length, flags: flags) }
    }

    public func flush() throws(BlockError) {
        try test.flush()
    }

    public func resize(to newLength: UInt64) throws(BlockError) {
        try both("resize", at: newLength) { node throws(BlockError) in try node.resize(to: newLength) }
    }

    /// Runs an operation on both children; when only one fails, that is a mismatch too.
    private func both(_ what: String, at offset: UInt64, _ operation: (BlockNode) throws(BlockError) -> Void) throws(BlockError) {
        var failures: [BlockError?] = []
        for node in [test, reference] {
            do throws(BlockError) {
                try operation(node)
                failures.append(nil)
            } catch {
                failures.append(error)
            }
        }
        if let testError = failures[0], let referenceError = failures[1], testError.errno == referenceError.errno { throw testError }
        if failures[0] == nil && failures[1] == nil { return }
        let message = "blkverify: node '\(nodeName)': \(what) at \(offset): return value mismatch: test "
            + "\(failures[0]?.message ?? "succeeded"), raw \(failures[1]?.message ?? "succeeded")"
        Log.error(message)
        throw .io(message)
    }

    /// The index of the first byte that differs, or nil.
    static func firstDifference(_ a: UnsafeRawBufferPointer, _ b: UnsafeRawBufferPointer) -> Int? {
        guard a.count > 0, memcmp(a.baseAddress!, b.baseAddress!, a.count) != 0 else { return nil }
        return (0..<a.count).first { a[$0] != b[$0] }
    }

    /// Opens `blkverify` nodes: `test` and `raw`, both required.
    public static let opener: DriverOpener = { options, context throws(OptionError) in
        let test = try context.requiredChild("test", of: options)
        let reference = try context.requiredChild("raw", of: options)
        try context.requireWritable([test, reference], of: options)
        let driver = BlkverifyDriver(nodeName: context.nodeName, test: test, reference: reference)
        return OpenedDriver(driver: driver, children: [("file", reference), ("test", test)])
    }
}
