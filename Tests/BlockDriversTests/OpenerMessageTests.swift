import BlockCore
import BlockDrivers
import Foundation
import XCTest
import LogOptionsClock

/// The wording of every opener refusal, in both syntaxes: QMP clients compare some of them with
/// qemu-storage-daemon's, operators read the command-line ones. Pinned so that moving the wording
/// into shared helpers changes no message.
final class OpenerMessageTests: XCTestCase {
    private var graph: BlockGraph!
    private var directory: String!

    override func setUpWithError() throws {
        graph = BlockGraph(drivers: Drivers.all)
        directory = NSTemporaryDirectory() + "blockd-messages-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        try graph.open(try KeyValueParser.parse("driver=null-co,node-name=n,size=1M"))
        try graph.open(try KeyValueParser.parse("driver=null-co,node-name=ro,size=1M,read-only=on"))
        _ = graph.throttleGroups.groupCreating("tg", limits: ThrottleLimits())
    }

    override func tearDownWithError() throws {
        graph.closeAll()
        try? FileManager.default.removeItem(atPath: directory)
    }

    /// The message a definition is refused with: `text` is key=value on the command line, the same
    /// members as JSON through QMP (`blockdev-add`).
    private func refusal(_ text: String, qmp: Bool, file: StaticString = #filePath, line: UInt = #line) -> String? {
        do {
            let value = try KeyValueParser.parse(text)
            if qmp {
                try graph.open(typed(value), context: "blockdev-add", syntax: .qmp)
            } else {
                try graph.open(value)
            }
            XCTFail("'\(text)' opened", file: file, line: line)
            return nil
        } catch {
            return error.message
        }
    }

    /// The key=value strings of `value` as the JSON types QMP would send.
    private func typed(_ value: OptionValue) -> OptionValue {
        switch value {
        case .object(let members): return .object(members.mapValues(typed))
        case .array(let items): return .array(items.map(typed))
        case .string(let text):
            if let number = Int64(text) { return .integer(number) }
            if text == "on" || text == "off" { return .bool(text == "on") }
            return value
        default: return value
        }
    }

    private func assertWording(_ text: String, qmp: String, commandLine: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(refusal(text, qmp: true, file: file, line: line), qmp, "QMP", file: file, line: line)
        XCTAssertEqual(refusal(text, qmp: false, file: file, line: line), commandLine, "command line", file: file, line: line)
    }

    func testMissingChildren() {
        assertWording("driver=throttle,node-name=t,throttle-group=tg",
                      qmp: "A block device must be specified for \"file\"",
                      commandLine: "--blockdev 't' (driver throttle): parameter 'file' is missing")
        assertWording("driver=blkdebug,node-name=d",
                      qmp: "A block device must be specified for \"image\"",
                      commandLine: "--blockdev 'd' (driver blkdebug): parameter 'image' is missing")
        assertWording("driver=blkverify,node-name=v,raw=n",
                      qmp: "A block device must be specified for \"test\"",
                      commandLine: "--blockdev 'v' (driver blkverify): parameter 'test' is missing")
        assertWording("driver=blkverify,node-name=v,test=n",
                      qmp: "A block device must be specified for \"raw\"",
                      commandLine: "--blockdev 'v' (driver blkverify): parameter 'raw' is missing")
        assertWording("driver=raw,node-name=r",
                      qmp: "Parameter 'file' is missing",
                      commandLine: "--blockdev 'r' (driver raw): parameter 'file' is missing")
        assertWording("driver=qcow2,node-name=q",
                      qmp: "Parameter 'file' is missing",
                      commandLine: "--blockdev 'q' (driver qcow2): parameter 'file' is missing")
        assertWording("driver=quorum,node-name=q,vote-threshold=1",
                      qmp: "Number of provided children must be 1 or more",
                      commandLine: "--blockdev 'q' (driver quorum): Number of provided children must be 1 or more")
    }

    func testChildReferences() {
        assertWording("driver=raw,node-name=r,file=nowhere",
                      qmp: "Cannot find device='nowhere' nor node-name='nowhere'",
                      commandLine: "--blockdev 'r' (driver raw): parameter 'file': no node named 'nowhere'")
        assertWording("driver=quorum,node-name=q,vote-threshold=1,children=n",
                      qmp: "Invalid parameter type for 'children', expected: array",
                      commandLine: "--blockdev 'q' (driver quorum): parameter 'children' expects a list (children.0=...), got a string")
        assertWording("driver=throttle,node-name=t,throttle-group=tg,file.0=n",
                      qmp: "Invalid parameter type for 'file', expected: string or object",
                      commandLine: "--blockdev 't' (driver throttle): parameter 'file' expects a node-name or a definition, got a array")
    }

    func testReadOnlyChildren() {
        for (driver, child) in [("throttle,throttle-group=tg", "file"), ("blkdebug", "image"), ("raw", "file"), ("qcow2", "file")] {
            assertWording("driver=\(driver),node-name=w,\(child)=ro",
                          qmp: "blockdev-add 'w' (driver \(driver.prefix { $0 != "," })): child 'ro' is read-only; add read-only=on",
                          commandLine: "--blockdev 'w' (driver \(driver.prefix { $0 != "," })): child 'ro' is read-only; add read-only=on")
        }
        assertWording("driver=blkverify,node-name=w,test=n,raw=ro",
                      qmp: "blockdev-add 'w' (driver blkverify): child 'ro' is read-only; add read-only=on",
                      commandLine: "--blockdev 'w' (driver blkverify): child 'ro' is read-only; add read-only=on")
        assertWording("driver=quorum,node-name=w,vote-threshold=1,children.0=n,children.1=ro",
                      qmp: "blockdev-add 'w' (driver quorum): child 'ro' is read-only; add read-only=on",
                      commandLine: "--blockdev 'w' (driver quorum): child 'ro' is read-only; add read-only=on")
    }

    func testDriverSpecificRefusals() {
        assertWording("driver=throttle,node-name=t,throttle-group=nope,file=n",
                      qmp: "Throttle group 'nope' does not exist",
                      commandLine: "--blockdev 't' (driver throttle): throttle group 'nope' does not exist (create it with --object throttle-group,id=nope,...)")
        assertWording("driver=blkdebug,node-name=d,image=n,align=3000",
                      qmp: "Cannot meet constraints with align 3000",
                      commandLine: "--blockdev 'd' (driver blkdebug): parameter 'align' must be a power of two up to 1M, got 3000")
        let config = directory + "/absent.conf"
        let unreadable = "could not read blkdebug config '\(config)': No such file or directory"
        XCTAssertEqual(refusal("driver=blkdebug,node-name=d,image=n,config=\(config)", qmp: true), unreadable)
        XCTAssertEqual(refusal("driver=blkdebug,node-name=d,image=n,config=\(config)", qmp: false),
                       "--blockdev 'd' (driver blkdebug): \(unreadable)")
        assertWording("driver=quorum,node-name=q,vote-threshold=0,children.0=n",
                      qmp: "Parameter 'vote-threshold' expects value >= 1",
                      commandLine: "--blockdev 'q' (driver quorum): vote-threshold must be 1 or more")
        assertWording("driver=quorum,node-name=q,vote-threshold=2,children.0=n",
                      qmp: "threshold may not exceed children count",
                      commandLine: "--blockdev 'q' (driver quorum): threshold may not exceed children count")
        assertWording("driver=null-co,node-name=z,detect-zeroes=unmap",
                      qmp: "setting detect-zeroes to unmap is not allowed without setting discard operation to unmap",
                      commandLine: "--blockdev 'z' (driver null-co): setting detect-zeroes to unmap is not allowed without setting discard operation to unmap")
    }

    func testFileAndFormatRefusals() throws {
        let absent = directory + "/absent.img"
        let fileQMP = try XCTUnwrap(refusal("driver=file,node-name=f,filename=\(absent)", qmp: true))
        XCTAssertFalse(fileQMP.hasPrefix("blockdev-add"), fileQMP)
        XCTAssertTrue(fileQMP.contains(absent), fileQMP)
        XCTAssertEqual(refusal("driver=file,node-name=f,filename=\(absent)", qmp: false), "--blockdev 'f' (driver file): \(fileQMP)")
        let junk = directory + "/junk.img"
        XCTAssertTrue(FileManager.default.createFile(atPath: junk, contents: Data(repeating: 0x41, count: 65536)))
        try graph.open(try KeyValueParser.parse("driver=file,node-name=junk,filename=\(junk)"))
        // Through QMP QEMU's words for a file that is not qcow2; on the command line the reason.
        XCTAssertEqual(refusal("driver=qcow2,node-name=q,file=junk", qmp: true), "Image is not in qcow2 format")
        XCTAssertEqual(refusal("driver=qcow2,node-name=q,file=junk", qmp: false),
                       "--blockdev 'q' (driver qcow2): '\(junk)': not a qcow2 image (bad magic)")
    }
}
