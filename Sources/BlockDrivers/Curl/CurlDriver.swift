#if canImport(Glibc)
import Glibc
#endif
import BlockCore
import LogOptionsClock
import CCurl
import Synchronization

/// The read-only curl drivers `http`, `https`, `ftp`, `ftps` and `tftp`: an image published on a
/// server, read with range requests through libcurl. Each read fetches its range plus `readahead`
/// bytes, kept in a small cache; concurrent reads use separate connections from a pool, so several
/// transfers are in flight at once. A server that does not serve byte ranges is refused at open;
/// `tftp`, which has none, is fetched whole into a local temporary file at open.
public final class CurlDriver: BlockDriver {
    public let driverName: String
    public let features: DriverFeatures
    public let length: UInt64
    /// The URL.
    public let url: String
    private let settings: CurlSettings
    private let readahead: UInt64
    /// Idle easy handles (each keeps its connection open).
    private let idle = Mutex<[CurlHandle]>([])
    private let cache: Mutex<CurlCache>
    /// The local copy of a file whose protocol has no byte ranges (tftp).
    private let whole: CurlWholeFile?

    /// Most easy handles kept.
    static let poolSize = 8

    init(driverName: String, settings: CurlSettings, first: CurlHandle, length: UInt64, readahead: UInt64, whole: CurlWholeFile? = nil) {
        self.whole = whole
        self.driverName = driverName
        self.url = settings.url
        self.settings = settings
        self.length = length
        self.readahead = readahead
        self.cache = Mutex(CurlCache(capacity: 16))
        var features = DriverFeatures()
        features.needsFlush = false
        features.maxTransfer = 32 << 20
        self.features = features
        idle.withLock { $0.append(first) }
    }

    public var filename: String { url }

    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(BlockError) {
        guard let base = buffer.baseAddress, buffer.count > 0 else { return }
        if let whole { return try whole.read(into: buffer, at: offset) }
        let count = UInt64(buffer.count)
        if cache.withLock({ $0.copy(into: base, at: offset, count: count) }) { return }
        let end = min(length, offset + count + readahead)
        let chunk = CurlChunk(offset: offset, count: Int(end - offset))
        try fetch(chunk)
        chunk.bytes.withUnsafeBytes { _ = memcpy(base, $0.baseAddress!, buffer.count) }
        cache.withLock { $0.insert(chunk) }
    }

    /// Fills a chunk with a range request on a pooled handle.
    private func fetch(_ chunk: CurlChunk) throws(BlockError) {
        let pooled = idle.withLock { $0.popLast() }
        let handle: CurlHandle
        if let pooled { handle = pooled } else { handle = try CurlHandle(settings) }
        defer { idle.withLock { if $0.count < CurlDriver.poolSize { $0.append(handle) } } }
        let wanted = chunk.bytes.count
        var received = 0
        var response = 0
        var message = [CChar](repeating: 0, count: 512)
        let code = chunk.bytes.withUnsafeMutableBytes { bytes in
            blk_curl_range_get(handle.pointer, chunk.offset, UInt64(wanted), bytes.baseAddress, &received, &response, &message, message.count)
        }
        guard code == 0 else {
            throw .io("\(driverName) read at \(chunk.offset)+\(wanted) from \(url): \(cText(message))")
        }
        if (driverName == "http" || driverName == "https") && response != 206 && !(response == 200 && chunk.offset == 0 && UInt64(wanted) == length) {
            throw .io("\(driverName) read at \(chunk.offset)+\(wanted) from \(url): the server answered \(response) instead of a range (206)")
        }
        guard received == wanted else {
            throw .io("\(driverName) read at \(chunk.offset)+\(wanted) from \(url): got \(received) bytes")
        }
    }

    public func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64, fua: Bool) throws(BlockError) {
        throw .notPermitted("the \(driverName) driver is read-only")
    }

    public func flush() throws(BlockError) {}

    public func close() {
        idle.withLock { $0.removeAll() }
    }

    /// The opener of one curl driver.
    public static func opener(for name: String) -> DriverOpener {
        { options, context throws(OptionError) in
            let settings = try CurlSettings.read(options, driver: name)
            let readahead = try options.size("readahead") ?? (256 << 10)
            guard readahead % 512 == 0 else {
                throw options.failure("Read-ahead size must be a multiple of 512", qmp: "Read-ahead size must be a multiple of 512")
            }
            guard context.common.readOnly else {
                throw options.failure("\(name) is read-only; add read-only=on", qmp: "curl block device does not support writes")
            }
            _ = CurlSettings.globalInit
            let handle: CurlHandle
            do throws(BlockError) {
                handle = try CurlHandle(settings)
            } catch {
                throw options.failure(error.message, qmp: error.message)
            }
            var size: Int64 = -1
            var ranges: Int32 = 0
            var response = 0
            var message = [CChar](repeating: 0, count: 512)
            let code = blk_curl_probe(handle.pointer, &size, &ranges, &response, &message, message.count)
            guard code == 0 else {
                let text = "CURL: Error opening file: \(cText(message))"
                throw options.failure(text, qmp: text)
            }
            guard size >= 0 else {
                throw options.failure("Server didn't report file size for \(settings.url)", qmp: "Server didn't report file size.")
            }
            if (name == "http" || name == "https") && ranges == 0 {
                throw options.failure("Server does not support 'range' (byte ranges): \(settings.url)",
                                      qmp: "Server does not support 'range' (byte ranges).")
            }
            var whole: CurlWholeFile?
            if name == "tftp" {
                // TFTP has no byte ranges: the file is fetched once, whole.
                do throws(BlockError) {
                    whole = try CurlWholeFile(settings, length: UInt64(size))
                } catch {
                    throw options.failure(error.message, qmp: error.message)
                }
            }
            return OpenedDriver(driver: CurlDriver(
                driverName: name, settings: settings, first: handle, length: UInt64(size), readahead: readahead, whole: whole))
        }
    }
}

/// One libcurl easy handle; freed with its last reference.
final class CurlHandle: @unchecked Sendable {
    let pointer: UnsafeMutableRawPointer

    init(_ settings: CurlSettings) throws(BlockError) {
        let made: UnsafeMutableRawPointer? = settings.withC { blk_curl_open($0) }
        guard let made else { throw .io("could not create a curl handle") }
        pointer = made
    }

    deinit { blk_curl_close(pointer) }
}

/// Ranges fetched recently (with their read-ahead), newest last.
struct CurlCache {
    var chunks: [CurlChunk] = []
    let capacity: Int

    init(capacity: Int) { self.capacity = capacity }

    /// Copies a range held whole by a cached chunk; false when none holds it.
    func copy(into base: UnsafeMutableRawPointer, at offset: UInt64, count: UInt64) -> Bool {
        for chunk in chunks.reversed() where offset >= chunk.offset && offset + count <= chunk.offset + UInt64(chunk.bytes.count) {
            chunk.bytes.withUnsafeBytes { _ = memcpy(base, $0.baseAddress! + Int(offset - chunk.offset), Int(count)) }
            return true
        }
        return false
    }

    mutating func insert(_ chunk: CurlChunk) {
        if chunks.count >= capacity { chunks.removeFirst() }
        chunks.append(chunk)
    }
}

/// Bytes of the remote file from `offset`.
final class CurlChunk: @unchecked Sendable {
    let offset: UInt64
    var bytes: [UInt8]

    init(offset: UInt64, count: Int) {
        self.offset = offset
        self.bytes = [UInt8](repeating: 0, count: count)
    }
}

/// The text of a NUL-terminated C buffer.
func cText(_ buffer: [CChar]) -> String {
    String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
}
