import BlockCore
import XCTest

/// The bitmap set's write path (groups of bitmaps marked through one table), trackers, discard and resize.
final class DirtyBitmapSetTests: XCTestCase {
    func testOneMarkReachesEveryRecordingBitmapOfEveryGranularity() throws {
        let set = DirtyBitmapSet()
        let a = try set.add(name: "a", granularity: 65536, size: 1 << 30, persistent: false, disabled: false)
        let b = try set.add(name: "b", granularity: 512, size: 1 << 30, persistent: false, disabled: false)
        let c = try set.add(name: "c", granularity: 65536, size: 1 << 30, persistent: false, disabled: false)
        let off = try set.add(name: "off", granularity: 65536, size: 1 << 30, persistent: false, disabled: true)
        set.mark(100, 1)  // one chunk each
        set.mark(64 * 65536 - 512, 1024)  // straddles a word boundary of the 64 KiB bitmaps
        set.mark(8 << 20, 64 * 65536)  // a whole word of the 64 KiB bitmaps
        for bitmap in [a, c] {
            XCTAssertEqual(bitmap.dirtyRanges(), [
                ByteRange(offset: 0, length: 65536), ByteRange(offset: 63 * 65536, length: 2 * 65536),
                ByteRange(offset: 8 << 20, length: 64 * 65536),
            ])
        }
        XCTAssertEqual(b.dirtyRanges().first, ByteRange(offset: 0, length: 512))
        XCTAssertEqual(b.dirtyChunks, 1 + 2 + 64 * 128)
        XCTAssertEqual(off.dirtyChunks, 0)
    }

    func testMarkSetsTheSameBitsAsTheBitmapItself() throws {
        let set = DirtyBitmapSet()
        let viaSet = try set.add(name: "s", granularity: 4096, size: 10 << 20, persistent: false, disabled: false)
        let direct = DirtyBitmap(name: "d", granularity: 4096, size: 10 << 20)
        var seed: UInt64 = 42
        for _ in 0..<2000 {
            seed = seed &* 6364136223846793005 &+ 1442695040888963407
            let offset = (seed >> 20) % (10 << 20)
            let length = min((seed >> 8) % (600 << 10) + 1, (10 << 20) - offset)
            set.mark(offset, length)
            direct.mark(offset, length)
        }
        XCTAssertEqual(viaSet.sha256, direct.sha256)
    }

    func testATrackerRecordsUntilUntracked() throws {
        let set = DirtyBitmapSet()
        let a = try set.add(name: "a", granularity: 65536, size: 1 << 24, persistent: false, disabled: true)
        let tracker = set.track(like: a)
        set.mark(0, 1)
        set.untrack(tracker)
        set.mark(1 << 20, 1)
        XCTAssertEqual(tracker.dirtyRanges(), [ByteRange(offset: 0, length: 65536)])
        XCTAssertEqual(a.dirtyChunks, 0)
        set.discard(a)
        XCTAssertNil(set.find("a"))
    }

    func testResizeKeepsBitsAndAttributes() throws {
        let set = DirtyBitmapSet()
        try set.add(name: "p", granularity: 65536, size: 8 << 20, persistent: true, disabled: false)
        try set.add(name: "q", granularity: 512, size: 8 << 20, persistent: false, disabled: true)
        set.mark(0, 4096)
        set.mark((8 << 20) - 1, 1)
        set.resize(to: 4 << 20 + 512)
        let p = try set.lookup("p")
        XCTAssertEqual(p.size, 4 << 20 + 512)
        XCTAssertTrue(p.persistent)
        XCTAssertEqual(p.dirtyRanges(), [ByteRange(offset: 0, length: 65536)])
        XCTAssertFalse(try set.lookup("q").enabled)
        set.resize(to: 16 << 20)
        set.mark(12 << 20, 1)
        XCTAssertEqual(try set.lookup("p").dirtyRanges(), [ByteRange(offset: 0, length: 65536), ByteRange(offset: 12 << 20, length: 65536)])
        XCTAssertEqual(try set.lookup("q").dirtyChunks, 0)
    }
}
