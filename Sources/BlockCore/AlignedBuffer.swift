#if canImport(Glibc)
import Glibc
#endif

/// A heap buffer aligned for O_DIRECT, owned by one user at a time.
///
/// `@unchecked Sendable`: a buffer is handed between threads (a pool, an io_uring completion) but
/// used by one owner at a time, which is the caller's contract; a lock per access would cost the
/// data path for nothing.
public final class AlignedBuffer: @unchecked Sendable {
    /// Alignment of every buffer: a page, enough for any logical block size.
    public static let alignment = 4096

    /// The memory.
    public private(set) var bytes: UnsafeMutableRawBufferPointer

    /// Allocates `capacity` bytes (rounded up to the alignment).
    public init(capacity: Int) {
        let size = max(AlignedBuffer.alignment, (capacity + AlignedBuffer.alignment - 1) & ~(AlignedBuffer.alignment - 1))
        var pointer: UnsafeMutableRawPointer?
        guard posix_memalign(&pointer, AlignedBuffer.alignment, size) == 0, let pointer else {
            fatalError("out of memory allocating \(size) bytes")
        }
        bytes = UnsafeMutableRawBufferPointer(start: pointer, count: size)
    }

    /// The usable size.
    public var capacity: Int { bytes.count }

    /// Grows to at least `capacity` bytes, keeping the first `preserving` bytes.
    public func reserve(_ capacity: Int, preserving: Int = 0) {
        guard capacity > bytes.count else { return }
        let bigger = AlignedBuffer(capacity: max(capacity, bytes.count * 2))
        if preserving > 0 {
            bigger.bytes.baseAddress!.copyMemory(from: bytes.baseAddress!, byteCount: preserving)
        }
        swap(&bytes, &bigger.bytes)
    }

    deinit { free(bytes.baseAddress) }
}

/// A read-only page-aligned block of zeroes shared by everything that writes or sends zeroes.
public enum ZeroBlock {
    /// Its size.
    public static let size = 1 << 20
    private static let storage: AlignedBuffer = {
        // posix_memalign may hand back recycled heap memory: clear it, never assume fresh pages.
        let buffer = AlignedBuffer(capacity: size)
        buffer.bytes.initializeMemory(as: UInt8.self, repeating: 0)
        return buffer
    }()
    /// The zeroes.
    public static var bytes: UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(storage.bytes)
    }
}

extension UnsafeRawBufferPointer {
    /// True when every byte is zero (the detect-zeroes check). Cheap on the common non-zero payload:
    /// the first and last words are looked at first, then 256-byte blocks whose words are OR-ed
    /// together (a loop the compiler vectorises), stopping at the first block that is not zero.
    public var isAllZero: Bool {
        guard let base = baseAddress else { return true }
        let count = self.count
        guard count >= 16 else {
            for index in 0..<count where base.load(fromByteOffset: index, as: UInt8.self) != 0 { return false }
            return true
        }
        if base.loadUnaligned(as: UInt64.self) | base.loadUnaligned(fromByteOffset: count - 8, as: UInt64.self) != 0 {
            return false
        }
        var index = 0
        while index + 256 <= count {
            var bits: UInt64 = 0
            for word in 0..<32 { bits |= base.loadUnaligned(fromByteOffset: index + word * 8, as: UInt64.self) }
            if bits != 0 { return false }
            index += 256
        }
        while index + 8 <= count {
            if base.loadUnaligned(fromByteOffset: index, as: UInt64.self) != 0 { return false }
            index += 8
        }
        // The last `count - index` (< 8) bytes lie inside the last word, already checked.
        return true
    }
}
