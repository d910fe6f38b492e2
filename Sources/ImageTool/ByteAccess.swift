import BlockCore

extension Array where Element == UInt8 {
    /// Runs `body` on the array's bytes, keeping the error type (the standard library's version rethrows `any Error`).
    mutating func withMutableBlockBytes(_ body: (UnsafeMutableRawBufferPointer) throws(BlockError) -> Void) throws(BlockError) {
        var failure: BlockError?
        withUnsafeMutableBytes { raw in
            do throws(BlockError) { try body(raw) } catch { failure = error }
        }
        if let failure { throw failure }
    }
}
