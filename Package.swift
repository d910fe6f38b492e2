// swift-tools-version:6.0
import PackageDescription

let strict: [SwiftSetting] = [.swiftLanguageMode(.v6)]
/// Release programs carry the Swift runtime, so they run where no toolchain is installed and `ldd`
/// lists only Debian's libraries. The sources use Glibc and the standard library, not Foundation;
/// ArgumentParser brings FoundationEssentials, whose two support libraries are named here because
/// a link-time -static-stdlib does not bring them (scripts/package and scripts/test check the result);
/// symbols are bound at start (`-z now`, with the default RELRO: read-only relocations).
let selfContained: [LinkerSetting] = [
    .unsafeFlags(
        ["-static-stdlib", "-l_FoundationCollections", "-l_FoundationCShims", "-Xlinker", "-z", "-Xlinker", "now"],
        .when(platforms: [.linux], configuration: .release)),
]

let package = Package(
    name: "blockd",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "blockd", targets: ["blockd"]),
        .executable(name: "blockctl", targets: ["blockctl"]),
        .executable(name: "blockimg", targets: ["blockimg"]),
        .executable(name: "blockd-nbd", targets: ["blockd-nbd"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
    ],
    targets: [
        .target(name: "CBlockShims"),
        .target(name: "CURing", linkerSettings: [.linkedLibrary("uring")]),
        .systemLibrary(name: "CZlib", pkgConfig: "zlib", providers: [.apt(["zlib1g-dev"])]),
        .systemLibrary(name: "CBzip2", providers: [.apt(["libbz2-dev"])]),
        .systemLibrary(name: "CGnuTLS", pkgConfig: "gnutls", providers: [.apt(["libgnutls28-dev"])]),
        .target(name: "CTLS", dependencies: ["CGnuTLS"]),
        .systemLibrary(name: "CLibNBD", pkgConfig: "libnbd", providers: [.apt(["libnbd-dev"])]),
        .target(name: "CCurl", linkerSettings: [.linkedLibrary("curl")]),
        .target(name: "CRBD", linkerSettings: [.linkedLibrary("dl")]),
        .target(name: "Version", swiftSettings: strict),
        .target(name: "NBDProtocol", swiftSettings: strict),
        .target(name: "JSON", swiftSettings: strict),
        .target(name: "QAPI", dependencies: ["JSON"], exclude: ["schema"], swiftSettings: strict),
        .target(name: "LogOptionsClock", dependencies: ["JSON"], swiftSettings: strict),
        .target(name: "BlockCore", dependencies: ["JSON", "LogOptionsClock", "CBlockShims"], swiftSettings: strict),
        .target(name: "BlockIO", dependencies: ["BlockCore", "LogOptionsClock", "CURing"], swiftSettings: strict),
        .target(name: "BlockDrivers", dependencies: ["BlockCore", "LogOptionsClock", "JSON", "QAPI", "BlockIO", "CBlockShims", "CZlib", "CLibNBD", "CCurl", "CBzip2", "CRBD"], swiftSettings: strict),
        .target(name: "ImageTool", dependencies: ["BlockCore", "LogOptionsClock", "BlockDrivers", "JSON"], swiftSettings: strict),
        .target(name: "BlockTestSupport", dependencies: ["BlockCore", "LogOptionsClock"], swiftSettings: strict),
        .target(name: "Sockets", dependencies: ["LogOptionsClock", "CBlockShims", "CTLS"], swiftSettings: strict),
        .target(name: "Exports", dependencies: ["NBDProtocol", "BlockCore", "LogOptionsClock", "Sockets", "CBlockShims"], swiftSettings: strict),
        .target(name: "Jobs", dependencies: ["BlockCore", "LogOptionsClock", "Sockets"], swiftSettings: strict),
        .target(name: "QMP", dependencies: ["JSON", "QAPI", "LogOptionsClock", "Sockets"], swiftSettings: strict),
        .target(name: "MetricsHTTP", dependencies: ["LogOptionsClock", "Sockets", "CBlockShims"], swiftSettings: strict),
        .target(name: "QMPClient", dependencies: ["JSON", "QAPI", "Sockets"], swiftSettings: strict),
        .target(
            name: "Daemon",
            dependencies: ["NBDProtocol", "BlockCore", "LogOptionsClock", "BlockIO", "BlockDrivers", "Sockets", "Exports", "JSON", "QAPI", "QMP", "Jobs", "CBlockShims", "Version",
                           "MetricsHTTP", .product(name: "Prometheus", package: "swift-prometheus")],
            swiftSettings: strict),
        .executableTarget(
            name: "blockd",
            dependencies: ["Daemon", "LogOptionsClock", .product(name: "ArgumentParser", package: "swift-argument-parser")],
            swiftSettings: strict,
            linkerSettings: selfContained),
        .executableTarget(
            name: "blockd-nbd", dependencies: ["Daemon", "LogOptionsClock"], swiftSettings: strict, linkerSettings: selfContained),
        .executableTarget(
            name: "blockctl",
            dependencies: ["QMPClient", "JSON", "Version", .product(name: "ArgumentParser", package: "swift-argument-parser")],
            swiftSettings: strict,
            linkerSettings: selfContained),
        .executableTarget(
            name: "blockimg",
            dependencies: ["ImageTool", "Version", .product(name: "ArgumentParser", package: "swift-argument-parser")],
            swiftSettings: strict,
            linkerSettings: selfContained),
        .testTarget(name: "QMPClientTests", dependencies: ["QMPClient", "JSON"], swiftSettings: strict),
        .testTarget(name: "NBDProtocolTests", dependencies: ["NBDProtocol"], swiftSettings: strict),
        .testTarget(name: "LogOptionsClockTests", dependencies: ["LogOptionsClock", "JSON"], swiftSettings: strict),
        .testTarget(name: "BlockCoreTests", dependencies: ["BlockCore", "LogOptionsClock", "JSON", "BlockDrivers"], swiftSettings: strict),
        .testTarget(name: "BlockDriversTests", dependencies: ["BlockCore", "LogOptionsClock", "JSON", "BlockDrivers", "BlockTestSupport"], swiftSettings: strict),
        .testTarget(name: "ExportsTests", dependencies: ["Exports", "NBDProtocol", "BlockCore", "LogOptionsClock", "BlockDrivers", "BlockTestSupport"], swiftSettings: strict),
        .testTarget(name: "SocketsTests", dependencies: ["Sockets", "LogOptionsClock"], swiftSettings: strict),
        .testTarget(name: "QAPITests", dependencies: ["QAPI", "JSON"], swiftSettings: strict),
        .testTarget(name: "JSONTests", dependencies: ["JSON"], swiftSettings: strict),
        .testTarget(name: "QMPTests", dependencies: ["QMP", "QAPI", "JSON"], swiftSettings: strict),
        .testTarget(name: "Qcow2Tests", dependencies: ["BlockCore", "BlockDrivers"], swiftSettings: strict),
        .testTarget(name: "ImageToolTests", dependencies: ["ImageTool", "BlockCore", "BlockDrivers"], swiftSettings: strict),
        .testTarget(name: "JobsTests", dependencies: ["Jobs", "BlockCore"], swiftSettings: strict),
        .testTarget(name: "MetricsHTTPTests", dependencies: ["MetricsHTTP"], swiftSettings: strict),
        .testTarget(name: "DaemonTests", dependencies: ["Daemon", "Sockets"], swiftSettings: strict),
    ]
)
