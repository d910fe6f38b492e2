// swift-tools-version:6.0
// libFuzzer targets for blockd (docs/reliability.md). A package of its own so that the main
// package's `swift build` and `swift test` never see it: `scripts/fuzz` builds it into
// `.build-fuzz` with the sanitizers. `Blockd` is a link to the main package's `Sources`; the
// modules the harnesses use are declared again below, with the same dependencies as in the
// main Package.swift, and compiled with coverage instrumentation, AddressSanitizer, `assert`s
// kept on, and -enable-testing (for `@testable import`).
import PackageDescription

let sanitize: [SwiftSetting] = [
    .swiftLanguageMode(.v6),
    .unsafeFlags(["-sanitize=fuzzer,address", "-enable-testing", "-assert-config", "Debug"]),
]
let sanitizeC: [CSetting] = [.unsafeFlags(["-fsanitize=fuzzer-no-link,address"])]

/// A main-package module, rebuilt here from `Blockd/NAME` with the sanitizers.
func module(_ name: String, _ dependencies: [Target.Dependency] = [], exclude: [String] = []) -> Target {
    .target(name: name, dependencies: dependencies, path: "Blockd/\(name)", exclude: exclude, swiftSettings: sanitize)
}

/// One fuzz target: an executable linked with libFuzzer.
func fuzzer(_ name: String, _ dependencies: [Target.Dependency]) -> Target {
    .executableTarget(
        name: name, dependencies: ["FuzzSupport"] + dependencies, swiftSettings: sanitize,
        linkerSettings: [.unsafeFlags(["-sanitize=fuzzer,address"])])
}

let package = Package(
    name: "blockd-fuzz",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "nbd-options", targets: ["FuzzNbdOptions"]),
        .executable(name: "nbd-requests", targets: ["FuzzNbdRequests"]),
        .executable(name: "qmp-json", targets: ["FuzzQmpJson"]),
        .executable(name: "qapi-args", targets: ["FuzzQapiArgs"]),
        .executable(name: "keyvalue", targets: ["FuzzKeyValue"]),
        .executable(name: "qcow2", targets: ["FuzzQcow2"]),
        .executable(name: "qcow2-check", targets: ["FuzzQcow2Check"]),
    ],
    dependencies: [
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
    ],
    targets: [
        // The main package's modules (keep in step with ../Package.swift).
        .target(name: "CBlockShims", path: "Blockd/CBlockShims", cSettings: sanitizeC),
        .target(name: "CURing", path: "Blockd/CURing", cSettings: sanitizeC, linkerSettings: [.linkedLibrary("uring")]),
        .systemLibrary(name: "CZlib", path: "Blockd/CZlib", pkgConfig: "zlib", providers: [.apt(["zlib1g-dev"])]),
        .systemLibrary(name: "CBzip2", path: "Blockd/CBzip2", providers: [.apt(["libbz2-dev"])]),
        .systemLibrary(name: "CGnuTLS", path: "Blockd/CGnuTLS", pkgConfig: "gnutls", providers: [.apt(["libgnutls28-dev"])]),
        .target(name: "CTLS", dependencies: ["CGnuTLS"], path: "Blockd/CTLS", cSettings: sanitizeC),
        .systemLibrary(name: "CLibNBD", path: "Blockd/CLibNBD", pkgConfig: "libnbd", providers: [.apt(["libnbd-dev"])]),
        .target(name: "CCurl", path: "Blockd/CCurl", cSettings: sanitizeC, linkerSettings: [.linkedLibrary("curl")]),
        .target(name: "CRBD", path: "Blockd/CRBD", cSettings: sanitizeC, linkerSettings: [.linkedLibrary("dl")]),
        module("Version"),
        module("NBDProtocol"),
        module("JSON"),
        module("QAPI", ["JSON"], exclude: ["schema"]),
        module("LogOptionsClock", ["JSON"]),
        module("BlockCore", ["JSON", "LogOptionsClock", "CBlockShims"]),
        module("BlockIO", ["BlockCore", "LogOptionsClock", "CURing"]),
        module("BlockDrivers", ["BlockCore", "LogOptionsClock", "JSON", "QAPI", "BlockIO", "CBlockShims", "CZlib", "CLibNBD", "CCurl", "CBzip2", "CRBD"]),
        module("Sockets", ["LogOptionsClock", "CBlockShims", "CTLS"]),
        module("Exports", ["NBDProtocol", "BlockCore", "LogOptionsClock", "Sockets", "CBlockShims"]),
        module("Jobs", ["BlockCore", "LogOptionsClock", "Sockets"]),
        module("QMP", ["JSON", "QAPI", "LogOptionsClock", "Sockets"]),
        module("MetricsHTTP", ["LogOptionsClock", "Sockets", "CBlockShims"]),
        module("Daemon", ["NBDProtocol", "BlockCore", "LogOptionsClock", "BlockIO", "BlockDrivers", "Sockets", "Exports", "JSON", "QAPI",
                          "QMP", "Jobs", "CBlockShims", "Version", "MetricsHTTP", .product(name: "Prometheus", package: "swift-prometheus")]),
        // The harnesses.
        .target(name: "CFuzzDriver", cSettings: sanitizeC),
        .target(name: "FuzzSupport", dependencies: ["CFuzzDriver", "BlockCore", "LogOptionsClock", "BlockDrivers", "Exports", "Sockets"], swiftSettings: sanitize),
        fuzzer("FuzzNbdOptions", ["Exports", "NBDProtocol", "BlockCore", "BlockDrivers"]),
        fuzzer("FuzzNbdRequests", ["Exports", "NBDProtocol", "BlockCore", "BlockDrivers"]),
        fuzzer("FuzzQmpJson", ["JSON", "QAPI", "QMP"]),
        fuzzer("FuzzQapiArgs", ["JSON", "QAPI"]),
        fuzzer("FuzzKeyValue", ["BlockCore", "LogOptionsClock", "BlockDrivers", "Daemon"]),
        fuzzer("FuzzQcow2", ["BlockCore", "BlockDrivers"]),
        fuzzer("FuzzQcow2Check", ["BlockCore", "BlockDrivers"]),
    ]
)
