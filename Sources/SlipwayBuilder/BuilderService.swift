import SlipwayProtos
import SlipwayRPC

/// `slipway.builder.v1.Builder`: Build, Mirror, Cancel, ResolveCommit.
struct BuilderService: RPCService {
    typealias API = Slipway_Builder_V1_Builder

    let builder: Builder

    func register(with router: inout RPCRouter) {
        router.addFiles([Slipway_Builder_V1_Builder_proto.descriptor])
        router.serverStreaming(API.Build.self) { request, writer, _ in
            try await builder.build(request) { event in try? await writer.write(event) }
        }
        router.serverStreaming(API.Mirror.self) { request, writer, _ in
            try await builder.mirror(request) { event in try? await writer.write(event) }
        }
        // Not on the event loop: stopping a build walks /proc and signals its processes.
        router.unary(API.Cancel.self) { request, _ in
            var response = Slipway_Builder_V1_CancelResponse()
            response.found = builder.cancel(request.buildId)
            return response
        }
        router.unary(API.ResolveCommit.self) { request, _ in
            guard let git = request.git else { throw RPCError(.invalidArgument, "git is required") }
            var response = Slipway_Builder_V1_ResolveCommitResponse()
            response.commit = try await builder.resolveCommit(git)
            return response
        }
    }
}
