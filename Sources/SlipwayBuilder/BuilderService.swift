import SlipwayProtos
import SlipwayRPC

/// `slipway.builder.v1.Builder`: Build, Mirror, Cancel, ResolveCommit.
struct BuilderService: Slipway_Builder_V1_Builder.ServiceProtocol {
    let builder: Builder

    func build(request: Slipway_Builder_V1_BuildRequest, response: ResponseWriter<Slipway_Builder_V1_BuildEvent>, context: ServerContext) async throws {
        try await builder.build(request) { event in try? await response.write(event) }
    }

    func mirror(request: Slipway_Builder_V1_MirrorRequest, response: ResponseWriter<Slipway_Builder_V1_BuildEvent>, context: ServerContext) async throws {
        try await builder.mirror(request) { event in try? await response.write(event) }
    }

    /// Not on the event loop: stopping a build walks /proc and signals its processes.
    func cancel(request: Slipway_Builder_V1_CancelRequest, context: ServerContext) async throws -> Slipway_Builder_V1_CancelResponse {
        var response = Slipway_Builder_V1_CancelResponse()
        response.found = builder.cancel(request.buildId)
        return response
    }

    func resolveCommit(request: Slipway_Builder_V1_ResolveCommitRequest, context: ServerContext) async throws -> Slipway_Builder_V1_ResolveCommitResponse {
        guard let git = request.git else { throw RPCError(.invalidArgument, "git is required") }
        var response = Slipway_Builder_V1_ResolveCommitResponse()
        response.commit = try await builder.resolveCommit(git)
        return response
    }
}
