import BlockCore
@testable import Daemon
import Exports
import Sockets
import XCTest

final class ConfigurationTests: XCTestCase {
    func testQemuStorageDaemonStyleOptions() throws {
        let configuration = try DaemonConfiguration(
            blockdevs: ["driver=null-co,node-name=n0"],
            servers: ["addr.type=unix,addr.path=/tmp/x.sock", "addr.type=inet,addr.host=::1,addr.port=10810,max-connections=5"],
            exports: ["type=nbd,id=e0,node-name=n0,writable=on,description=hello"])
        XCTAssertEqual(configuration.servers[0].address, .unix(path: "/tmp/x.sock"))
        XCTAssertEqual(configuration.servers[1].address, .inet(host: "::1", port: "10810"))
        XCTAssertEqual(configuration.servers[1].maxConnections, 5)
        XCTAssertEqual(configuration.exports, [ExportSpec(id: "e0", nodeName: "n0", name: "n0", description: "hello", writable: true)])
    }

    func testMonitorOptions() throws {
        let configuration = try DaemonConfiguration(
            blockdevs: [], servers: [], exports: [],
            chardevs: ["socket,id=m0,path=/tmp/qmp.sock,server=on,wait=off", "socket,id=m1,host=::1,port=4444,server=on,wait=off"],
            monitors: ["chardev=m0", "m1,mode=control,pretty=on"])
        XCTAssertEqual(configuration.chardevs.map(\.address), [.unix(path: "/tmp/qmp.sock"), .inet(host: "::1", port: "4444")])
        XCTAssertEqual(configuration.monitors, [MonitorSpec(chardev: "m0", pretty: false), MonitorSpec(chardev: "m1", pretty: true)])
        XCTAssertThrowsError(try DaemonConfiguration(blockdevs: [], servers: [], exports: [], chardevs: [], monitors: ["chardev=m9"])) {
            XCTAssertEqual("\($0)", "--monitor: no --chardev with id 'm9'")
        }
        XCTAssertThrowsError(try DaemonConfiguration(blockdevs: [], servers: [], exports: [], chardevs: ["socket,id=m0,path=/x,server=off"], monitors: []))
    }

    func testThrottleGroupObjects() throws {
        let configuration = try DaemonConfiguration(
            blockdevs: [], servers: [], exports: [],
            objects: ["throttle-group,id=tg0,limits.bps-total=1048576,limits.iops-read=100,limits.iops-read-max=400,limits.iops-read-max-length=5",
                      #"{"qom-type": "throttle-group", "id": "tg1", "limits": {"iops-size": 8192, "bps-write": 10}}"#])
        XCTAssertEqual(configuration.throttleGroups.map(\.id), ["tg0", "tg1"])
        let limits = configuration.throttleGroups[0].limits
        XCTAssertEqual(limits[.bpsTotal].average, 1 << 20)
        XCTAssertEqual(limits[.iopsRead], ThrottleLimits.Limit(average: 100, burst: 400, burstSeconds: 5))
        XCTAssertEqual(configuration.throttleGroups[1].limits.iopsSize, 8192)
        let legacy = try DaemonConfiguration(blockdevs: [], servers: [], exports: [], objects: ["throttle-group,id=t,x-iops-total=300"])
        XCTAssertEqual(legacy.throttleGroups[0].limits[.iopsTotal].average, 300)
        XCTAssertThrowsError(try DaemonConfiguration(
            blockdevs: [], servers: [], exports: [], objects: ["throttle-group,id=t,x-iops-total=3,limits.bps-total=5"]))
        XCTAssertThrowsError(try DaemonConfiguration(blockdevs: [], servers: [], exports: [], objects: ["throttle-group,id=t,limits.bps=5"])) {
            XCTAssertEqual("\($0)", "--object: unknown parameter 'limits.bps'")
        }
        XCTAssertThrowsError(try DaemonConfiguration(
            blockdevs: [], servers: [], exports: [], objects: ["throttle-group,id=t,limits.iops-total=10,limits.iops-total-max=5"])) {
            XCTAssertEqual("\($0)", "--object: bps_max/iops_max cannot be lower than bps/iops values")
        }
        XCTAssertThrowsError(try DaemonConfiguration(
            blockdevs: [], servers: [], exports: [], objects: ["throttle-group,id=t", "throttle-group,id=t"])) {
            XCTAssertEqual("\($0)", "--object: id 't' is used twice")
        }
    }

    func testErrorsNameTheKey() {
        XCTAssertThrowsError(try DaemonConfiguration(blockdevs: [], servers: ["addr.type=unix"], exports: [])) {
            XCTAssertEqual("\($0)", "--nbd-server: parameter 'addr.path' is missing")
        }
        XCTAssertThrowsError(try DaemonConfiguration(blockdevs: [], servers: ["addr.type=vsock,addr.cid=3"], exports: [])) {
            XCTAssertEqual("\($0)", "--nbd-server: parameter 'addr.type' expects one of unix, inet, fd, got 'vsock'")
        }
        XCTAssertThrowsError(try DaemonConfiguration(blockdevs: [], servers: ["addr.type=inet,addr.port=99999"], exports: [])) {
            XCTAssertEqual("\($0)", "--nbd-server: parameter 'addr.port' expects a port number from 0 to 65535, got '99999'")
        }
        XCTAssertThrowsError(try DaemonConfiguration(blockdevs: [], servers: ["addr.type=unix,addr.path=/s"], exports: ["type=fuse,id=e,node-name=n"]))
        XCTAssertThrowsError(try DaemonConfiguration(blockdevs: [], servers: ["addr.type=unix,addr.path=/s"], exports: ["type=nbd,id=e,node-name=n,writeable=on"])) {
            XCTAssertEqual("\($0)", "--export: unknown parameter 'writeable'")
        }
    }
}

final class ConfigFileTests: XCTestCase {
    func testLinesMirrorTheCommandLine() throws {
        let text = """
            # a comment
            blockdev driver=file,node-name=f0,filename=/images/a b.img
              --blockdev driver=raw,node-name=d0,file=f0\t
            nbd-server addr.type=unix,addr.path=/run/blockd/a.sock

            export type=nbd,id=e0,node-name=d0,writable=on
            object throttle-group,id=tg0,limits.bps-total=1048576
            pidfile /run/blockd/a.pid
            log-level debug
            """
        let file = try ConfigFile(text: text, path: "a.conf")
        XCTAssertEqual(file.blockdevs.map(\.text), ["driver=file,node-name=f0,filename=/images/a b.img", "driver=raw,node-name=d0,file=f0"])
        XCTAssertEqual(file.blockdevs.map(\.location), ["a.conf:2", "a.conf:3"])
        XCTAssertEqual(file.servers.map(\.text), ["addr.type=unix,addr.path=/run/blockd/a.sock"])
        XCTAssertEqual(file.exports.map(\.text), ["type=nbd,id=e0,node-name=d0,writable=on"])
        XCTAssertEqual(file.objects.map(\.text), ["throttle-group,id=tg0,limits.bps-total=1048576"])
        XCTAssertEqual(file.pidfile, "/run/blockd/a.pid")
        XCTAssertEqual(file.logLevel, "debug")
    }

    func testValueErrorsNameFileAndLine() throws {
        let file = try ConfigFile(text: "blockdev driver=null-co\nblockdev bogus\n", path: "d.conf")
        XCTAssertThrowsError(try DaemonConfiguration(blockdevs: file.blockdevs, servers: [], exports: [])) {
            XCTAssertEqual("\($0)", "d.conf:2: --blockdev: expected 'key=value', got 'bogus'")
        }
    }

    func testErrorsNameFileAndLine() {
        XCTAssertThrowsError(try ConfigFile(text: "blockdev x=1\nexprot type=nbd", path: "b.conf")) {
            XCTAssertEqual("\($0)", "b.conf:2: unknown option 'exprot' (expected blockdev, nbd-server, export, chardev, monitor, object, metrics, pidfile or log-level)")
        }
        XCTAssertThrowsError(try ConfigFile(text: "export", path: "c.conf")) {
            XCTAssertEqual("\($0)", "c.conf:1: 'export' needs a value")
        }
    }
}
