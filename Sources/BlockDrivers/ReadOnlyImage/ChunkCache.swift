import BlockCore
import Synchronization

/// The last few decompressed chunks of a compressed read-only image (cloop blocks, dmg chunks),
/// keyed by chunk number, so that sequential small reads decompress each chunk once.
final class ChunkCache: Sendable {
    private let capacity: Int
    private let entries = Mutex<[(key: Int, bytes: [UInt8])]>([])

    /// A cache of at most `capacity` chunks.
    init(capacity: Int) {
        self.capacity = max(capacity, 1)
    }

    /// The chunk `key`, from the cache or made by `make` (outside the lock) and then kept.
    func chunk(_ key: Int, make: () throws(BlockError) -> [UInt8]) throws(BlockError) -> [UInt8] {
        let cached = entries.withLock { list -> [UInt8]? in
            guard let index = list.firstIndex(where: { $0.key == key }) else { return nil }
            let entry = list.remove(at: index)
            list.append(entry)
            return entry.bytes
        }
        if let cached { return cached }
        let bytes = try make()
        entries.withLock { list in
            if !list.contains(where: { $0.key == key }) {
                if list.count >= capacity { list.removeFirst() }
                list.append((key, bytes))
            }
        }
        return bytes
    }
}
