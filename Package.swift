// swift-tools-version:6.0
import PackageDescription

let strict: [SwiftSetting] = [.swiftLanguageMode(.v6)]

let package = Package(
    name: "blockd",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "blockd", targets: ["blockd"]),
        .executable(name: "blockctl", targets: ["blockctl"]),
        .executable(name: "blockimg", targets: ["blockimg"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
    ],
    targets: [
        .target(name: "CBlockShims"),
        .target(name: "CURing", linkerSettings: [.linkedLibrary("uring")]),
        .systemLibrary(name: "CZlib", pkgConfig: "zlib", providers: [.apt(["zlib1g-dev"])]),
        .target(name: "NBDProtocol", swiftSettings: strict),
        .target(name: "JSON", swiftSettings: strict),
        .target(name: "QAPI", dependencies: ["JSON"], exclude: ["schema"], swiftSettings: strict),
        .target(name: "BlockCore", dependencies: ["JSON", "CBlockShims"], swiftSettings: strict),
        .target(name: "BlockIO", dependencies: ["BlockCore", "CURing"], swiftSettings: strict),
        .target(name: "BlockDrivers", dependencies: ["BlockCore", "BlockIO", "CBlockShims", "CZlib"], swiftSettings: strict),
        .target(name: "ImageTool", dependencies: ["BlockCore", "BlockDrivers", "JSON"], swiftSettings: strict),
        .target(name: "Sockets", dependencies: ["BlockCore", "CBlockShims"], swiftSettings: strict),
        .target(name: "Exports", dependencies: ["NBDProtocol", "BlockCore", "Sockets", "CBlockShims"], swiftSettings: strict),
        .target(name: "Jobs", dependencies: ["BlockCore"], swiftSettings: strict),
        .target(name: "QMP", dependencies: ["JSON", "QAPI", "BlockCore", "Sockets"], swiftSettings: strict),
        .target(name: "QMPClient", dependencies: ["JSON", "QAPI", "Sockets"], swiftSettings: strict),
        .target(
            name: "Daemon",
            dependencies: ["NBDProtocol", "BlockCore", "BlockIO", "BlockDrivers", "Sockets", "Exports", "JSON", "QAPI", "QMP", "Jobs", "CBlockShims"],
            swiftSettings: strict),
        .executableTarget(
            name: "blockd",
            dependencies: ["Daemon", .product(name: "ArgumentParser", package: "swift-argument-parser")],
            swiftSettings: strict),
        .executableTarget(
            name: "blockctl",
            dependencies: ["QMPClient", "JSON", .product(name: "ArgumentParser", package: "swift-argument-parser")],
            swiftSettings: strict),
        .executableTarget(
            name: "blockimg",
            dependencies: ["ImageTool", .product(name: "ArgumentParser", package: "swift-argument-parser")],
            swiftSettings: strict),
        .testTarget(name: "QMPClientTests", dependencies: ["QMPClient", "JSON"], swiftSettings: strict),
        .testTarget(name: "NBDProtocolTests", dependencies: ["NBDProtocol"], swiftSettings: strict),
        .testTarget(name: "BlockCoreTests", dependencies: ["BlockCore", "BlockDrivers"], swiftSettings: strict),
        .testTarget(name: "ExportsTests", dependencies: ["Exports", "NBDProtocol", "BlockCore", "BlockDrivers"], swiftSettings: strict),
        .testTarget(name: "QAPITests", dependencies: ["QAPI", "JSON"], swiftSettings: strict),
        .testTarget(name: "JSONTests", dependencies: ["JSON"], swiftSettings: strict),
        .testTarget(name: "QMPTests", dependencies: ["QMP", "QAPI", "JSON"], swiftSettings: strict),
        .testTarget(name: "Qcow2Tests", dependencies: ["BlockCore", "BlockDrivers"], swiftSettings: strict),
        .testTarget(name: "ImageToolTests", dependencies: ["ImageTool", "BlockCore", "BlockDrivers"], swiftSettings: strict),
        .testTarget(name: "JobsTests", dependencies: ["Jobs", "BlockCore"], swiftSettings: strict),
        .testTarget(name: "DaemonTests", dependencies: ["Daemon", "Sockets"], swiftSettings: strict),
    ]
)
