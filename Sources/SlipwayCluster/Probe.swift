import Foundation
import SlipwayProtos
import SlipwayRPC

#if canImport(Glibc)
import Glibc
#endif

/// Checks of a local instance, each within a time limit: a TCP connect or an HTTP/1.0 GET whose
/// status is 2xx or 3xx (on their own thread, blocking sockets with poll), a `grpc.health.v1` Check
/// through our own RPC client, or a command run inside the instance (`runc exec`) that exits 0.
enum Probe {
    enum Result: Equatable {
        case success
        case failure(String)
    }

    static func check(_ check: Readiness, instance: Instance, runtime: LocalRuntime, timeout: Duration) async -> Result {
        switch check {
        case .tcp, .http:
            return await self.check(host: instance.host ?? "127.0.0.1", port: instance.port, readiness: check, timeout: timeout)
        case .grpc(let service):
            return await grpcHealth(host: instance.host ?? "127.0.0.1", port: instance.port, service: service, timeout: timeout)
        case .exec(let command):
            return await runtime.exec(instance.id, command, timeout: timeout)
        }
    }

    static func check(host: String = "127.0.0.1", port: Int, readiness: Readiness, timeout: Duration) async -> Result {
        await withCheckedContinuation { continuation in
            Thread.detachNewThread {
                continuation.resume(returning: run(host: host, port: port, readiness: readiness, timeout: timeout))
            }
        }
    }

    /// `grpc.health.v1.Health/Check` over cleartext HTTP/2, as Kubernetes' gRPC probe does.
    static func grpcHealth(host: String = "127.0.0.1", port: Int, service: String, timeout: Duration) async -> Result {
        let client = RPCClient(host: host, port: port)
        defer { Task { await client.close() } }
        var request = Grpc_Health_V1_HealthCheckRequest()
        request.service = service
        do {
            let response = try await client.unary(Grpc_Health_V1_Health.Check.self, request, options: CallOptions(timeout: timeout))
            let status = switch response.status {
            case .serving: "SERVING"
            case .notServing: "NOT_SERVING"
            case .serviceUnknown: "SERVICE_UNKNOWN"
            default: "UNKNOWN"
            }
            return response.status == .serving ? .success : .failure("grpc.health.v1 Check\(service.isEmpty ? "" : " of \(service)") answered \(status)")
        } catch let error as RPCError {
            return .failure("grpc.health.v1 Check\(service.isEmpty ? "" : " of \(service)"): \(error.code) \(error.message)")
        } catch {
            return .failure("grpc.health.v1 Check: \(error)")
        }
    }

    static func run(host: String = "127.0.0.1", port: Int, readiness: Readiness, timeout: Duration) -> Result {
        let deadline = ContinuousClock.now + timeout
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return .failure("cannot open a socket") }
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr(host)
        address.sin_port = UInt16(port).bigEndian
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        if connected != 0 && errno != EINPROGRESS { return .failure("connect to port \(port): \(String(cString: strerror(errno)))") }
        guard wait(fd, Int16(POLLOUT), until: deadline) else { return .failure("connect to port \(port) timed out") }
        var error: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &length)
        guard error == 0 else { return .failure("connect to port \(port): \(String(cString: strerror(error)))") }
        guard case .http(let path) = readiness else { return .success }

        let request = Array("GET \(path) HTTP/1.0\r\nHost: \(host):\(port)\r\nUser-Agent: slipway-probe\r\n\r\n".utf8)
        var sent = 0
        while sent < request.count {
            guard wait(fd, Int16(POLLOUT), until: deadline) else { return .failure("GET \(path) timed out") }
            let count = request[sent...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            guard count > 0 else { return .failure("GET \(path): the connection closed") }
            sent += count
        }
        var response: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 512)
        while !response.contains(10) && response.count < 4096 {
            guard wait(fd, Int16(POLLIN), until: deadline) else { return .failure("GET \(path) timed out") }
            let count = recv(fd, &buffer, buffer.count, 0)
            guard count > 0 else { break }
            response += buffer[0..<count]
        }
        let statusLine = String(decoding: response.prefix { $0 != 13 && $0 != 10 }, as: UTF8.self)
        let parts = statusLine.split(separator: " ")
        guard parts.count >= 2, parts[0].hasPrefix("HTTP/"), let code = Int(parts[1]) else {
            return .failure("GET \(path): not an HTTP response (\"\(statusLine.prefix(60))\")")
        }
        return (200..<400).contains(code) ? .success : .failure("GET \(path) answered \(code)")
    }

    private static func wait(_ fd: Int32, _ events: Int16, until deadline: ContinuousClock.Instant) -> Bool {
        let remaining = deadline - ContinuousClock.now
        // poll takes at most Int32.max ms: a longer timeout (a user's number) waits that long, it does not trap.
        let seconds = min(remaining.components.seconds, Int64(Int32.max / 1000))
        let millis = Int32(clamping: max(0, seconds * 1000 + remaining.components.attoseconds / 1_000_000_000_000_000))
        var descriptor = pollfd(fd: fd, events: events, revents: 0)
        return poll(&descriptor, 1, millis) == 1
    }
}
