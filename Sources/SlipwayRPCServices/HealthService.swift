import SlipwayProtos
import SlipwayRPC
import Synchronization

/// `grpc.health.v1.Health`: Check and Watch, for grpc_health_probe, Kubernetes gRPC probes and load balancers.
///
/// The empty service name is the server as a whole. Services registered on the server are SERVING
/// once it starts; on shutdown every status turns NOT_SERVING before connections drain.
public final class HealthService: Grpc_Health_V1_Health.ServiceProtocol {
    public typealias Status = Grpc_Health_V1_HealthCheckResponse.ServingStatus

    private struct State {
        var statuses: [String: Status] = ["": .serving]
        var watchers: [Int: (service: String, continuation: AsyncStream<Status>.Continuation)] = [:]
        var nextWatcher = 0
    }

    private let state = Mutex(State())

    public init() {}

    /// Sets the status of `service` ("" for the whole server) and tells its watchers.
    public func setStatus(_ status: Status, for service: String = "") {
        let watchers = state.withLock { state -> [AsyncStream<Status>.Continuation] in
            state.statuses[service] = status
            return state.watchers.values.filter { $0.service == service }.map(\.continuation)
        }
        for watcher in watchers { watcher.yield(status) }
    }

    /// Marks everything NOT_SERVING (graceful shutdown began) and ends the watches.
    public func enterShutdown() {
        let watchers = state.withLock { state -> [AsyncStream<Status>.Continuation] in
            for key in state.statuses.keys { state.statuses[key] = .notServing }
            return state.watchers.values.map(\.continuation)
        }
        for watcher in watchers {
            watcher.yield(.notServing)
            watcher.finish()
        }
    }

    /// The current status of `service`, nil when the server does not know it.
    public func status(of service: String) -> Status? {
        state.withLock { $0.statuses[service] }
    }

    public func check(request: Grpc_Health_V1_HealthCheckRequest, context: ServerContext) throws -> Grpc_Health_V1_HealthCheckResponse {
        guard let status = status(of: request.service) else {
            throw RPCError(.notFound, "unknown service \"\(request.service)\"; this server knows: \(knownServices())")
        }
        var response = Grpc_Health_V1_HealthCheckResponse()
        response.status = status
        return response
    }

    public func watch(
        request: Grpc_Health_V1_HealthCheckRequest, response writer: ResponseWriter<Grpc_Health_V1_HealthCheckResponse>, context: ServerContext
    ) async throws {
        let (stream, continuation) = AsyncStream<Status>.makeStream(bufferingPolicy: .bufferingNewest(1))
        let id = state.withLock { state -> Int in
            let id = state.nextWatcher
            state.nextWatcher += 1
            state.watchers[id] = (request.service, continuation)
            continuation.yield(state.statuses[request.service] ?? .serviceUnknown)
            return id
        }
        defer { _ = state.withLock { $0.watchers.removeValue(forKey: id) } }
        var last: Status?
        for await status in stream where status != last {
            last = status
            var response = Grpc_Health_V1_HealthCheckResponse()
            response.status = status
            try await writer.write(response)
        }
    }

    private func knownServices() -> String {
        state.withLock { $0.statuses.keys.filter { !$0.isEmpty }.sorted().joined(separator: ", ") }
    }
}

extension RPCRouter {
    /// Adds what every Slipway server carries, after its own services: health (every registered
    /// service SERVING) and reflection (v1 and v1alpha). Returns the health service to update.
    public mutating func registerStandardServices() -> HealthService {
        let health = HealthService()
        register(health)
        register(ReflectionService(router: self))
        for service in serviceNames { health.setStatus(.serving, for: service) }
        return health
    }
}
