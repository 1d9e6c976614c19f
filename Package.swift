// swift-tools-version:6.0
import PackageDescription

let strict: [SwiftSetting] = [.enableUpcomingFeature("ExistentialAny")]

/// The seven platform services: (executable, library) pairs.
let services = [
    ("slipway-gateway", "SlipwayGateway"),
    ("slipway-pipeline", "SlipwayPipeline"),
    ("slipway-builder", "SlipwayBuilder"),
    ("slipway-network", "SlipwayNetwork"),
    ("slipway-cluster", "SlipwayCluster"),
    ("slipway-certs", "SlipwayCerts"),
    ("slipway-logs", "SlipwayLogs"),
]

let nio: [Target.Dependency] = [
    .product(name: "NIOCore", package: "swift-nio"),
    .product(name: "NIOPosix", package: "swift-nio"),
]

var targets: [Target] = [
    // C libraries, one shim header each.
    .systemLibrary(name: "CNGHTTP2", pkgConfig: "libnghttp2", providers: [.apt(["libnghttp2-dev"])]),
    .systemLibrary(name: "CProtobufC", pkgConfig: "libprotobuf-c", providers: [.apt(["libprotobuf-c-dev"])]),
    .systemLibrary(name: "CMalloc"),
    // Process spawning in a new session with pipes (what Glibc's Swift module does not expose).
    .target(name: "CSlipwaySpawn"),

    // Code generation: protoc-c output for descriptor.proto/plugin.proto, and our protoc plugin.
    .target(name: "CProtocPlugin", dependencies: ["CProtobufC"]),
    .executableTarget(
        name: "protoc-gen-slipway-swift",
        dependencies: ["CProtocPlugin", "CProtobufC", "SlipwayProtobuf"],
        swiftSettings: strict
    ),

    // Protobuf runtime for generated Swift types, and the generated code itself (see scripts/generate-protos.sh).
    .target(name: "SlipwayProtobuf", dependencies: ["CProtobufC"], swiftSettings: strict),
    .target(name: "CSlipwayProtos", dependencies: ["CProtobufC"]),
    // Generated: messages (*.pb.swift) and, per service, a ServiceProtocol and a typed Client (*.rpc.swift).
    .target(name: "SlipwayProtos", dependencies: ["CSlipwayProtos", "SlipwayProtobuf", "CProtobufC", "SlipwayRPC"], swiftSettings: strict),

    // The RPC layer: gRPC wire protocol on nghttp2.
    .target(
        name: "SlipwayRPC",
        dependencies: [
            "CNGHTTP2", "SlipwayProtobuf",
            .product(name: "Logging", package: "swift-log"),
            .product(name: "NIOSSL", package: "swift-nio-ssl"),
            .product(name: "NIOTLS", package: "swift-nio"),
            .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
        ] + nio,
        swiftSettings: strict
    ),

    // Services every server carries: grpc.health.v1 and server reflection (v1 and v1alpha).
    .target(name: "SlipwayRPCServices", dependencies: ["SlipwayRPC", "SlipwayProtos", "SlipwayProtobuf"] + nio, swiftSettings: strict),

    // What every service executable shares: configuration, logging, lifecycle, and the platform's
    // trust (platform CA, service identities, mutual TLS, the access table).
    .target(
        name: "SlipwayServiceKit",
        dependencies: [
            "SlipwayRPC", "SlipwayRPCServices", "SlipwayProtos", "SlipwayProtobuf",
            .product(name: "Logging", package: "swift-log"),
            .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
            .product(name: "NIOSSL", package: "swift-nio-ssl"),
            .product(name: "Crypto", package: "swift-crypto"),
            .product(name: "X509", package: "swift-certificates"),
            .product(name: "SwiftASN1", package: "swift-asn1"),
        ] + nio,
        swiftSettings: strict
    ),

    // Child processes in their own session with line-by-line output, tree kill, crash ledger (builder, cluster).
    .target(name: "SlipwayProcess", dependencies: ["CSlipwaySpawn"], swiftSettings: strict),
    // Workload isolation on one machine: bridges, network namespaces, nftables, user namespaces and
    // the hardened OCI config, for the cluster's instances and the builder's RUN steps.
    .target(
        name: "SlipwayIsolation",
        dependencies: ["SlipwayProcess", "SlipwayServiceKit", .product(name: "Crypto", package: "swift-crypto"), .product(name: "Logging", package: "swift-log")],
        swiftSettings: strict),

    // A small HTTP/1.1 client (one request per connection, bounded body, deadline, TLS with chosen roots).
    .target(
        name: "SlipwayHTTP",
        dependencies: [
            .product(name: "NIOHTTP1", package: "swift-nio"),
            .product(name: "NIOSSL", package: "swift-nio-ssl"),
        ] + nio,
        swiftSettings: strict
    ),

    // OCI distribution API client (manifests, digests, auth) shared by the builder and the cluster.
    .target(
        name: "SlipwayRegistry",
        dependencies: [
            "SlipwayHTTP",
            .product(name: "NIOHTTP1", package: "swift-nio"),
            .product(name: "NIOSSL", package: "swift-nio-ssl"),
        ] + nio,
        swiftSettings: strict
    ),

    // ACME (RFC 8555) client: accounts, orders, HTTP-01, finalize, download, rollover, revocation.
    .target(
        name: "SlipwayACME",
        dependencies: [
            "SlipwayHTTP",
            .product(name: "Crypto", package: "swift-crypto"),
            .product(name: "X509", package: "swift-certificates"),
            .product(name: "SwiftASN1", package: "swift-asn1"),
            .product(name: "Logging", package: "swift-log"),
            .product(name: "NIOHTTP1", package: "swift-nio"),
        ] + nio,
        swiftSettings: strict
    ),

    // Benchmark peer for scripts/bench-rpc.sh; the peer it is measured against is a package of its own under Benchmarks/.
    .executableTarget(
        name: "slipway-echo",
        dependencies: ["SlipwayServiceKit", "SlipwayRPC", .product(name: "ArgumentParser", package: "swift-argument-parser")] + nio,
        swiftSettings: strict
    ),

    // Test fixtures shared by the Swift tests and the interop peer the Python suites drive.
    .target(
        name: "SlipwayRPCTestSupport",
        dependencies: ["SlipwayRPC", "SlipwayProtos"],
        path: "Tests/SlipwayRPCTestSupport",
        swiftSettings: strict
    ),
    .executableTarget(
        name: "slipway-interop-peer",
        dependencies: ["SlipwayRPC", "SlipwayRPCServices", "SlipwayProtos", "SlipwayRPCTestSupport", .product(name: "Logging", package: "swift-log")] + nio,
        path: "Tests/InteropPeer",
        swiftSettings: strict
    ),

    // Fuzz targets (libFuzzer with `scripts/fuzz.sh`; without it, a replayer of the seed corpus that `make test` runs).
    .executableTarget(
        name: "slipway-fuzz",
        dependencies: ["SlipwayRPC", "SlipwayProtos", "SlipwayGateway", "SlipwayNetwork", "SlipwayCluster"] + nio,
        path: "Tests/Fuzz",
        exclude: ["corpus", "make-seeds.py"],
        swiftSettings: strict
    ),

    // What several test targets share: a real docker-registry, test failures.
    .target(name: "SlipwayTestSupport", dependencies: ["SlipwayRegistry", "SlipwayProcess"] + nio, path: "Tests/SlipwayTestSupport", swiftSettings: strict),

    .testTarget(name: "SlipwayLogsTests", dependencies: ["SlipwayLogs", "SlipwayProtos", "SlipwayRPC"], swiftSettings: strict),
    .testTarget(
        name: "SlipwayBuilderTests",
        dependencies: ["SlipwayBuilder", "SlipwayLogs", "SlipwayRegistry", "SlipwayProcess", "SlipwayTestSupport", "SlipwayServiceKit", "SlipwayProtos", "SlipwayRPC"],
        swiftSettings: strict
    ),
    .testTarget(
        name: "SlipwayPipelineTests",
        dependencies: ["SlipwayPipeline", "SlipwayLogs", "SlipwayServiceKit", "SlipwayProtos", "SlipwayRPC", .product(name: "GRDB", package: "GRDB.swift")],
        swiftSettings: strict
    ),
    .testTarget(
        name: "SlipwayClusterTests",
        dependencies: ["SlipwayCluster", "SlipwayIsolation", "SlipwayServiceKit", "SlipwayProcess", "SlipwayRegistry", "SlipwayTestSupport", "SlipwayRPC", "SlipwayRPCServices", .product(name: "Logging", package: "swift-log")],
        // Responses recorded from real Kubernetes API servers (Fixtures/kubernetes/SOURCES.md), read by path.
        exclude: ["Fixtures"],
        swiftSettings: strict
    ),
    .testTarget(
        name: "SlipwayACMETests",
        dependencies: [
            "SlipwayACME", "SlipwayHTTP", "SlipwayTestSupport",
            .product(name: "X509", package: "swift-certificates"), .product(name: "SwiftASN1", package: "swift-asn1"),
            .product(name: "Crypto", package: "swift-crypto"), .product(name: "Logging", package: "swift-log"),
            .product(name: "NIOSSL", package: "swift-nio-ssl"), .product(name: "NIOHTTP1", package: "swift-nio"),
        ] + nio,
        swiftSettings: strict
    ),
    .testTarget(name: "SlipwayNetworkTests", dependencies: ["SlipwayNetwork", "SlipwayProcess", "SlipwayTestSupport"], swiftSettings: strict),
    .testTarget(
        name: "SlipwayServiceKitTests",
        dependencies: [
            "SlipwayServiceKit", "SlipwayRPC", "SlipwayRPCServices", "SlipwayProtos", "SlipwayProtobuf",
            .product(name: "X509", package: "swift-certificates"), .product(name: "SwiftASN1", package: "swift-asn1"),
            .product(name: "Logging", package: "swift-log"), .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            .product(name: "Crypto", package: "swift-crypto"), .product(name: "NIOSSL", package: "swift-nio-ssl"),
        ],
        swiftSettings: strict),
    .testTarget(name: "SlipwayProtobufTests", dependencies: ["SlipwayProtos", "SlipwayProtobuf"], swiftSettings: strict),
    .testTarget(
        name: "SlipwayRPCTests",
        dependencies: [
            "SlipwayRPC", "SlipwayRPCServices", "SlipwayProtos", "SlipwayProtobuf", "SlipwayServiceKit", "SlipwayRPCTestSupport",
            .product(name: "NIOEmbedded", package: "swift-nio"),
        ] + nio,
        swiftSettings: strict
    ),
]

/// What a service library needs beyond the common set.
let serviceDependencies: [String: [Target.Dependency]] = [
    "SlipwayBuilder": ["SlipwayRegistry", "SlipwayProcess", "SlipwayIsolation", .product(name: "Crypto", package: "swift-crypto")],
    "SlipwayCluster": [
        "SlipwayProcess", "SlipwayIsolation", "SlipwayHTTP", "SlipwayRegistry", .product(name: "Crypto", package: "swift-crypto"), .product(name: "Yams", package: "Yams"),
        .product(name: "NIOSSL", package: "swift-nio-ssl"), .product(name: "NIOHTTP1", package: "swift-nio"),
    ],
    "SlipwayPipeline": ["SlipwayRegistry", .product(name: "GRDB", package: "GRDB.swift"), .product(name: "Crypto", package: "swift-crypto")],
    "SlipwayCerts": [
        "SlipwayACME", "SlipwayHTTP", .product(name: "Crypto", package: "swift-crypto"), .product(name: "X509", package: "swift-certificates"),
        .product(name: "SwiftASN1", package: "swift-asn1"), .product(name: "NIOSSL", package: "swift-nio-ssl"),
    ],
    "SlipwayGateway": [
        .product(name: "GRDB", package: "GRDB.swift"), .product(name: "Crypto", package: "swift-crypto"),
        .product(name: "NIOHTTP1", package: "swift-nio"), .product(name: "NIOSSL", package: "swift-nio-ssl"),
    ],
    "SlipwayNetwork": ["SlipwayProcess", .product(name: "Crypto", package: "swift-crypto"), .product(name: "X509", package: "swift-certificates")],
]

for (executable, library) in services {
    targets.append(.target(
        name: library,
        dependencies: (serviceDependencies[library] ?? []) + [
            "SlipwayServiceKit", "SlipwayRPC", "SlipwayProtos", "SlipwayProtobuf", "CMalloc",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "Logging", package: "swift-log"),
            .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
        ],
        swiftSettings: strict))
    targets.append(.executableTarget(name: executable, dependencies: [
            .target(name: library), "SlipwayServiceKit", .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ] + (executable == "slipway-builder" ? ["SlipwayIsolation"] : []),
        swiftSettings: strict))
}

// The command-line client: `slipway up/down` and every API call through the gateway.
targets.append(.target(
    name: "SlipwayCLI",
    dependencies: [
        "SlipwayRPC", "SlipwayProtos", "SlipwayProtobuf", "CSlipwaySpawn", "SlipwayServiceKit", "SlipwayHTTP", "SlipwayIsolation",
        .product(name: "Logging", package: "swift-log"),
        .product(name: "NIOHTTP1", package: "swift-nio"),
        .product(name: "ArgumentParser", package: "swift-argument-parser"),
        .product(name: "NIOSSL", package: "swift-nio-ssl"),
        .product(name: "X509", package: "swift-certificates"),
    ],
    swiftSettings: strict))
targets.append(.executableTarget(name: "slipway", dependencies: ["SlipwayCLI"], swiftSettings: strict))
targets.append(.testTarget(
    name: "SlipwayGatewayTests",
    dependencies: ["SlipwayGateway", "SlipwayRPC", "SlipwayProtos", .product(name: "Crypto", package: "swift-crypto"), .product(name: "GRDB", package: "GRDB.swift")],
    // Deliveries recorded from the git hosts (Fixtures/webhooks/SOURCES.md), read by path.
    exclude: ["Fixtures"],
    swiftSettings: strict))

// Fan-out benchmark of slipway-logs against Redis pub/sub (scripts/bench-logs.sh).
targets.append(.executableTarget(name: "slipway-logs-bench", dependencies: ["SlipwayRPC", "SlipwayProtos", "SlipwayServiceKit", .product(name: "ArgumentParser", package: "swift-argument-parser")] + nio, path: "Benchmarks/LogsBench", swiftSettings: strict))

let package = Package(
    name: "Slipway",
    platforms: [.macOS(.v15)],
    products: services.map { .executable(name: $0.0, targets: [$0.0]) } + [
        .executable(name: "slipway", targets: ["slipway"]),
        .executable(name: "slipway-echo", targets: ["slipway-echo"]),
        .executable(name: "protoc-gen-slipway-swift", targets: ["protoc-gen-slipway-swift"]),
        .library(name: "SlipwayRPC", targets: ["SlipwayRPC"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.6"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-crypto.git", from: "3.12.3"),
        .package(url: "https://github.com/apple/swift-certificates.git", from: "1.21.1"),
        .package(url: "https://github.com/apple/swift-asn1.git", from: "1.7.4"),
        .package(url: "https://github.com/jpsim/Yams.git", from: "5.0.1"),
        .package(url: "https://github.com/groue/GRDB.swift.git", from: "7.10.0"),
    ],
    targets: targets
)
