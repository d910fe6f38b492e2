/// Byte-array access with typed errors, for the drivers and tools that fill buffers from nodes.
extension Array where Element == UInt8 {
    /// Runs `body` on the array's bytes, keeping the error type (the standard library's version rethrows `any Error`).
    public mutating func withMutableBytes(_ body: (UnsafeMutableRawBufferPointer) throws(BlockError) -> Void) throws(BlockError) {
        var failure: BlockError?
        withUnsafeMutableBytes { raw in
            do throws(BlockError) { try body(raw) } catch { failure = error }
        }
        if let failure { throw failure }
    }

    /// Runs `body` on the array's bytes, read-only, keeping the error type.
    public func withBytes(_ body: (UnsafeRawBufferPointer) throws(BlockError) -> Void) throws(BlockError) {
        var failure: BlockError?
        withUnsafeBytes { raw in
            do throws(BlockError) { try body(raw) } catch { failure = error }
        }
        if let failure { throw failure }
    }
}
