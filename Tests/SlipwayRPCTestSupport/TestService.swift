import Foundation
import SlipwayProtos
import SlipwayRPC
import Synchronization

/// `slipway.testing.v1.TestService`, the service the interop and robustness suites call.
///
/// - `Unary`: echoes text and payload; `fail_code` ends with that status and `fail_message`;
///   `delay_ms` waits first (cancellable). Request metadata `x-echo` / `x-echo-bin` comes back as
///   initial and trailing metadata. The text `__cancelled_count` returns in `index` how many
///   handlers have seen their call cancelled.
/// - `ServerStream`: `count` responses (index 0…count-1), `delay_ms` between them, then `fail_code`.
/// - `ClientStream`: one response: texts joined by commas, `index` = number of requests,
///   `payload` = total payload bytes as decimal text.
/// - `Bidi`: one response per request, same index; a request with `fail_code` ends the call.
public final class TestService: Slipway_Testing_V1_TestService.ServiceProtocol {
    public typealias Request = Slipway_Testing_V1_TestRequest
    public typealias Response = Slipway_Testing_V1_TestResponse

    private let cancelled = Atomic<Int>(0)

    public init() {}

    /// How many handlers saw their call cancelled.
    public var cancelledCount: Int { cancelled.load(ordering: .relaxed) }

    public func unary(request: Request, context: ServerContext) async throws -> Response {
        if request.text == "__cancelled_count" {
            var response = Response()
            response.index = Int32(cancelledCount)
            return response
        }
        echoMetadata(context)
        try await observingCancellation { try await delay(request.delayMs) }
        try fail(request)
        var response = Response()
        response.text = request.text
        response.payload = request.payload
        return response
    }

    public func serverStream(request: Request, response writer: ResponseWriter<Response>, context: ServerContext) async throws {
        echoMetadata(context)
        try await observingCancellation {
            for index in 0..<Int(request.count) {
                if index > 0 { try await delay(request.delayMs) }
                var response = Response()
                response.text = request.text
                response.index = Int32(index)
                response.payload = request.payload
                try await writer.write(response)
            }
        }
        try fail(request)
    }

    public func clientStream(request requests: RequestStream<Request>, context: ServerContext) async throws -> Response {
        echoMetadata(context)
        var texts: [String] = []
        var bytes = 0
        for try await request in requests {
            try fail(request)
            texts.append(request.text)
            bytes += request.payload.count
        }
        var response = Response()
        response.text = texts.joined(separator: ",")
        response.index = Int32(texts.count)
        response.payload = Array(String(bytes).utf8)
        return response
    }

    public func bidi(request requests: RequestStream<Request>, response writer: ResponseWriter<Response>, context: ServerContext) async throws {
        echoMetadata(context)
        var index: Int32 = 0
        try await observingCancellation {
            for try await request in requests {
                try fail(request)
                try await delay(request.delayMs)
                var response = Response()
                response.text = request.text
                response.index = index
                response.payload = request.payload
                try await writer.write(response)
                index += 1
            }
        }
    }

    private func echoMetadata(_ context: ServerContext) {
        var initial = Metadata()
        if let echo = context.metadata["x-echo"] { initial.add("x-echo", echo) }
        if let binary = context.metadata.binary("x-echo-bin") {
            initial.add("x-echo-bin", binary: binary)
            context.addTrailingMetadata("x-trailer", "bin-\(binary.count)")
        }
        if !initial.isEmpty { context.setInitialMetadata(initial) }
        if let echo = context.metadata["x-echo"] { context.addTrailingMetadata("x-echo-trailer", echo) }
    }

    private func delay(_ milliseconds: Int32) async throws {
        guard milliseconds > 0 else { return }
        try await Task.sleep(for: .milliseconds(Int(milliseconds)))
    }

    /// Runs `body`, counting it when the call was cancelled under it (client cancel, deadline, disconnect).
    private func observingCancellation(_ body: () async throws -> Void) async throws {
        do {
            try await body()
        } catch {
            if error is CancellationError || (error as? RPCError).map({ [.cancelled, .deadlineExceeded, .unavailable].contains($0.code) }) == true {
                cancelled.add(1, ordering: .relaxed)
            }
            throw error
        }
    }

    private func fail(_ request: Request) throws {
        guard request.failCode != 0 else { return }
        let code = RPCStatusCode(rawValue: Int(request.failCode)) ?? .unknown
        throw RPCError(code, request.failMessage, metadata: ["x-fail": "yes"])
    }
}
