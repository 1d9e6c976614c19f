import SlipwayProtos
import SlipwayRPC

/// The network service (`slipway.network.v1.Network`) as the place certificates and challenges go.
public struct NetworkInstaller: CertificateInstaller {
    typealias API = Slipway_Network_V1_Network
    let client: API.Client

    public init(client: RPCClient) {
        self.client = API.Client(wrapping: client)
    }

    public func install(chain: String, key: String) async throws {
        var request = Slipway_Network_V1_InstallCertificateRequest()
        request.certificateChainPem = chain
        request.privateKeyPem = key
        _ = try await call("install the certificate on the load balancer") { try await client.installCertificate(request) }
    }

    public func presentChallenge(token: String, keyAuthorization: String) async throws {
        var request = Slipway_Network_V1_ChallengeRequest()
        request.token = token
        request.keyAuthorization = keyAuthorization
        _ = try await call("present the HTTP-01 challenge on the load balancer") { try await client.presentChallenge(request) }
    }

    public func cleanUpChallenge(token: String) async throws {
        var request = Slipway_Network_V1_ChallengeRequest()
        request.token = token
        _ = try await call("remove the HTTP-01 challenge from the load balancer") { try await client.cleanUpChallenge(request) }
    }

    private func call<T>(_ what: String, _ body: () async throws -> T) async throws -> T {
        do {
            return try await body()
        } catch let error as RPCError {
            throw CertificateManager.Failure(kind: .unavailable, description: "could not \(what) (network service at \(client.rpc.host):\(client.rpc.port)): \(error.message)")
        }
    }
}
