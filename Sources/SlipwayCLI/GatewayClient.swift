import ArgumentParser
import Foundation
import NIOSSL
import SlipwayProtobuf
import SlipwayProtos
import SlipwayRPC

/// Options every command that talks to the gateway takes.
public struct ClientOptions: ParsableArguments, Sendable {
    @Option(help: "The gateway, HOST:PORT or https://HOST:PORT (env SLIPWAY_GATEWAY, default 127.0.0.1:7000).")
    var gateway: String?
    @Option(help: "API token (env SLIPWAY_TOKEN; default: the admin token in <data-dir>/gateway/admin-token).")
    var token: String?
    @Option(help: "PEM roots to trust for an https:// gateway (default: the system's).") var caFile: String?
    @Option(help: "Data directory of the local platform (env SLIPWAY_DATA_DIR, default ./.slipway).") var dataDir: String?
    @Option(name: [.customShort("o"), .long], help: "Output: text or json.") var output: OutputFormat = .text

    public init() {}

    var environment: [String: String] { ProcessInfo.processInfo.environment }

    var resolvedDataDir: String { dataDir ?? environment["SLIPWAY_DATA_DIR"] ?? "./.slipway" }

    func connect() throws -> GatewayClient {
        var address = gateway ?? environment["SLIPWAY_GATEWAY"] ?? "127.0.0.1:7000"
        var tls: RPCClient.TLS?
        if address.hasPrefix("https://") {
            address.removeFirst("https://".count)
            let roots: NIOSSLTrustRoots = try caFile.map { .certificates(try NIOSSLCertificate.fromPEMFile($0)) } ?? .default
            tls = RPCClient.TLS(trustRoots: roots)
        } else if address.hasPrefix("http://") {
            address.removeFirst("http://".count)
        }
        address = address.trimmingCharacters(in: CharacterSet(charactersIn: "/"))
        guard let parsed = ServiceAddress(parsing: address) else {
            throw CLIError.usage("--gateway \(address) is not HOST:PORT")
        }
        let host = parsed.host
        let port = parsed.port
        var secret = token ?? environment["SLIPWAY_TOKEN"]
        if secret == nil {
            let file = (resolvedDataDir as NSString).appendingPathComponent("gateway/admin-token")
            secret = (try? String(contentsOfFile: file, encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines)
        }
        guard let secret, !secret.isEmpty else {
            throw CLIError.auth("no API token: pass --token or set SLIPWAY_TOKEN (on the machine running `slipway up`, the admin token is in \(resolvedDataDir)/gateway/admin-token)")
        }
        return GatewayClient(client: RPCClient(host: host, port: port, tls: tls), token: secret, address: "\(host):\(port)")
    }
}

public enum OutputFormat: String, ExpressibleByArgument, Sendable {
    case text, json
}

/// The public API with the token on every call.
public struct GatewayClient: Sendable {
    typealias API = Slipway_Api_V1_Slipway
    let client: RPCClient
    let token: String
    let address: String

    var options: CallOptions {
        CallOptions(timeout: .seconds(60), metadata: ["authorization": "Bearer \(token)", "x-slipway-origin": "cli"])
    }

    var streamOptions: CallOptions {
        CallOptions(metadata: ["authorization": "Bearer \(token)", "x-slipway-origin": "cli"])
    }

    func call<M: ProtoMethod>(_ method: M.Type, _ request: M.Input) async throws -> M.Output {
        do {
            return try await client.unary(method, request, options: options)
        } catch let error as RPCError {
            throw CLIError(error, gateway: address)
        }
    }

    func stream<M: ProtoMethod>(_ method: M.Type, _ request: M.Input, _ body: (M.Output) async throws -> Bool) async throws {
        do {
            try await client.serverStreaming(method, request, options: streamOptions) { responses in
                for try await response in responses where try await !body(response) { return }
            }
        } catch let error as RPCError {
            throw CLIError(error, gateway: address)
        }
    }

    func close() async { await client.close() }
}

/// What a command reports on failure, with the exit code scripts rely on (docs/cli.md).
public struct CLIError: Error, CustomStringConvertible {
    public var message: String
    public var exitCode: Int32

    public var description: String { message }

    static func usage(_ message: String) -> CLIError { CLIError(message: message, exitCode: 2) }
    static func notFound(_ message: String) -> CLIError { CLIError(message: message, exitCode: 3) }
    static func auth(_ message: String) -> CLIError { CLIError(message: message, exitCode: 4) }
    static func failed(_ message: String) -> CLIError { CLIError(message: message, exitCode: 1) }

    init(message: String, exitCode: Int32) {
        self.message = message
        self.exitCode = exitCode
    }

    init(_ error: RPCError, gateway: String) {
        switch error.code {
        case .invalidArgument, .outOfRange, .failedPrecondition, .alreadyExists:
            self.init(message: error.message, exitCode: 2)
        case .notFound:
            self.init(message: error.message, exitCode: 3)
        case .unauthenticated, .permissionDenied:
            self.init(message: error.message, exitCode: 4)
        case .unavailable:
            self.init(message: "the gateway at \(gateway) cannot be reached (\(error.message)); is the platform up? (slipway up)", exitCode: 5)
        case .resourceExhausted:
            self.init(message: error.message, exitCode: 6)
        default:
            self.init(message: "\(error.code): \(error.message)", exitCode: 7)
        }
    }
}
