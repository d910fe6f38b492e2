import BlockCore
import XCTest

final class DirtyBitmapTests: XCTestCase {
    func testMarkSetsEveryTouchedChunk() {
        let bitmap = DirtyBitmap(name: "b", granularity: 65536, size: 64 << 20)
        bitmap.mark(4096, 1)
        bitmap.mark(65535, 2)  // straddles chunks 0 and 1
        bitmap.mark(63 * 65536, 3 * 65536)  // across a word boundary (bits 63..65)
        XCTAssertEqual(bitmap.dirtyChunks, 5)
        XCTAssertEqual(bitmap.count, 5 * 65536)
        XCTAssertEqual(bitmap.dirtyRanges(), [ByteRange(offset: 0, length: 2 * 65536), ByteRange(offset: 63 * 65536, length: 3 * 65536)])
    }

    func testRunsAlternateAndClipToTheSize() {
        let bitmap = DirtyBitmap(name: "b", granularity: 512, size: 10_000)  // 20 chunks, the last one partial
        bitmap.mark(9_999, 1)
        let runs = bitmap.runs(from: 0, length: 10_000)
        XCTAssertEqual(runs.map(\.length), [9_728, 272])
        XCTAssertEqual(runs.map(\.dirty), [false, true])
        XCTAssertEqual(bitmap.runs(from: 0, length: 10_000, limit: 1).count, 1)
    }

    func testResetClearsOnlyWholeChunks() {
        let bitmap = DirtyBitmap(name: "b", granularity: 4096, size: 1 << 20)
        bitmap.fill()
        bitmap.reset(1000, 3 * 4096)  // chunks 1 and 2 wholly inside; 0 and 3 partly
        XCTAssertEqual(bitmap.dirtyRanges(), [ByteRange(offset: 0, length: 4096), ByteRange(offset: 3 * 4096, length: (1 << 20) - 3 * 4096)])
    }

    func testSerialisationRoundTripsLeastSignificantBitFirst() {
        let bitmap = DirtyBitmap(name: "b", granularity: 512, size: 100 * 512)
        bitmap.mark(0, 512)
        bitmap.mark(9 * 512, 512)
        let bytes = bitmap.serialized()
        XCTAssertEqual(bytes.count, 13)
        XCTAssertEqual(Array(bytes[0..<2]), [0x01, 0x02])
        let copy = DirtyBitmap(name: "c", granularity: 512, size: 100 * 512)
        bytes.withUnsafeBytes { copy.deserialize($0, atByte: 0) }
        XCTAssertEqual(copy.dirtyRanges(), bitmap.dirtyRanges())
    }

    func testSha256MatchesQemuForAnEmptyBitmap() {
        // qemu-storage-daemon 7.2: a fresh 64 MiB bitmap of 64 KiB chunks (16 zero words).
        let bitmap = DirtyBitmap(name: "b", granularity: 65536, size: 64 << 20)
        XCTAssertEqual(bitmap.sha256, "38723a2e5e8a17aa7950dc008209944e898f69a7bd10a23c839d341e935fd5ca")
        XCTAssertEqual(SHA256.hex(Array("abc".utf8)), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
    }

    func testMergeAcrossGranularities() {
        let fine = DirtyBitmap(name: "f", granularity: 512, size: 1 << 20)
        fine.mark(70_000, 10)
        let coarse = DirtyBitmap(name: "c", granularity: 65536, size: 1 << 20)
        coarse.merge(from: fine)
        XCTAssertEqual(coarse.dirtyRanges(), [ByteRange(offset: 65536, length: 65536)])
    }

    func testSetRecordsOnlyRecordingBitmapsAndRefusesBusyRemoval() throws {
        let set = DirtyBitmapSet()
        let on = try set.add(name: "on", granularity: 65536, size: 1 << 20, persistent: false, disabled: false)
        let off = try set.add(name: "off", granularity: 65536, size: 1 << 20, persistent: false, disabled: true)
        set.mark(0, 1)
        XCTAssertEqual(on.dirtyChunks, 1)
        XCTAssertEqual(off.dirtyChunks, 0)
        XCTAssertThrowsError(try set.add(name: "on", granularity: 512, size: 1, persistent: false, disabled: false)) {
            XCTAssertEqual(($0 as? DirtyBitmapError)?.message, "Bitmap already exists: on")
        }
        on.retain()
        XCTAssertThrowsError(try set.remove("on")) {
            XCTAssertEqual(($0 as? DirtyBitmapError)?.message, "Bitmap 'on' is currently in use by another operation and cannot be used")
        }
        on.release()
        try set.remove("on")
        set.mark(65536, 1)
        XCTAssertEqual(on.dirtyChunks, 1)
    }

    func testFreezeKeepsNewWritesAndThawFollowsTheMode() throws {
        let set = DirtyBitmapSet()
        let bitmap = try set.add(name: "b", granularity: 65536, size: 1 << 20, persistent: false, disabled: false)
        bitmap.mark(0, 1)
        try set.freeze(bitmap)
        XCTAssertTrue(bitmap.busy)
        set.mark(65536, 1)  // recorded in the successor while frozen
        XCTAssertEqual(bitmap.dirtyChunks, 1)
        set.finishJob(bitmap, mode: .onSuccess, succeeded: false, remaining: nil)
        XCTAssertEqual(bitmap.dirtyChunks, 2)  // failure: every bit kept, plus the new write
        try set.freeze(bitmap)
        set.mark(3 * 65536, 1)
        set.finishJob(bitmap, mode: .onSuccess, succeeded: true, remaining: nil)
        XCTAssertEqual(bitmap.dirtyRanges(), [ByteRange(offset: 3 * 65536, length: 65536)])  // success: only the new write
        XCTAssertFalse(bitmap.busy)
        set.mark(5 * 65536, 1)
        XCTAssertEqual(bitmap.dirtyChunks, 2)  // records directly again
    }

    func testBlockStatusScanOfA1TiBSparseBitmapIsFast() {
        let bitmap = DirtyBitmap(name: "b", granularity: 65536, size: 1 << 40)
        bitmap.mark(500 << 30, 4096)
        let start = ContinuousClock.now
        let runs = bitmap.runs(from: 0, length: 1 << 40)
        let elapsed = ContinuousClock.now - start
        XCTAssertEqual(runs.count, 3)
        XCTAssertLessThan(elapsed, .milliseconds(100))  // about 1 ms in release builds; generous for debug
    }
}
