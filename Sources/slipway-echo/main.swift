import ArgumentParser
import Logging
import ServiceLifecycle
import SlipwayRPC
import SlipwayServiceKit

/// The benchmark peer for scripts/bench-rpc.sh (Benchmarks/grpc-swift-echo is the anchor): raw-bytes echo methods served by Slipway's RPC layer.
///
/// - `/bench.Echo/Unary`: returns the request bytes.
/// - `/bench.Echo/Stream`: the request is a 4-byte big-endian count N; replies with N messages of 100 bytes.
@main
struct Echo: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "slipway-echo", abstract: "gRPC echo server for benchmarks.")

    @Option(help: "Address to listen on, HOST:PORT.")
    var listen = "127.0.0.1:50052"

    @Option(help: "Where unary handlers run: 'event-loop' (inline, never blocks) or 'async' (a task per call).")
    var unaryHandlers = "event-loop"

    @Option(help: "Serve TLS (ALPN h2) with this certificate (PEM); with --tls-key.")
    var tlsCert: String?

    @Option(help: "The TLS certificate's key (PEM).")
    var tlsKey: String?

    func run() async throws {
        guard let address = ServiceAddress(parsing: listen) else {
            throw ValidationError("--listen \(listen) is not HOST:PORT")
        }
        guard unaryHandlers == "event-loop" || unaryHandlers == "async" else {
            throw ValidationError("--unary-handlers must be 'event-loop' or 'async'")
        }
        LoggingSystem.bootstrap { LogfmtLogHandler(label: $0, level: .info) }
        let logger = Logger(label: "slipway-echo")
        var router = RPCRouter()
        if unaryHandlers == "async" {
            router.unary("/bench.Echo/Unary", RawBytes.self, RawBytes.self) { request, _ in request }
        } else {
            router.unaryOnEventLoop("/bench.Echo/Unary", RawBytes.self, RawBytes.self) { request, _ in request }
        }
        router.serverStreaming("/bench.Echo/Stream", RawBytes.self, RawBytes.self) { request, writer, _ in
            let b = request.bytes
            let count = b.count >= 4 ? Int(b[0]) << 24 | Int(b[1]) << 16 | Int(b[2]) << 8 | Int(b[3]) : 1
            let payload = RawBytes([UInt8](repeating: 0x61, count: 100))
            for _ in 0..<count { try await writer.write(payload) }
        }
        var tls: RPCServer.TLS?
        switch (tlsCert, tlsKey) {
        case (nil, nil): tls = nil
        case (let cert?, let key?): tls = try RPCServer.TLS(certificatePath: cert, keyPath: key)
        default: throw ValidationError("--tls-cert and --tls-key go together")
        }
        let server = RPCServer(host: address.host, port: address.port, router: router, tls: tls, logger: logger)
        try await ServiceGroup(services: [server], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger).run()
    }
}
