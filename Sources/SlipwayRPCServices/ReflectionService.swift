import SlipwayProtobuf
import SlipwayProtos
import SlipwayRPC

/// Server reflection (`grpc.reflection.v1` and `v1alpha` for older clients): lets grpcurl and
/// other tools list services and fetch the descriptors of every file the server was built from.
public struct ReflectionService: RPCService {
    private let index: ReflectionIndex

    /// Describes what `router` serves (plus reflection itself).
    public init(router: RPCRouter) {
        var files = router.files
        files.append(Grpc_Reflection_V1_Reflection_proto.descriptor)
        files.append(Grpc_Reflection_V1alpha_Reflection_proto.descriptor)
        var services = router.serviceNames
        services.insert(Grpc_Reflection_V1_ServerReflection.name)
        services.insert(Grpc_Reflection_V1alpha_ServerReflection.name)
        index = ReflectionIndex(files: files, services: services.sorted())
    }

    public func register(with router: inout RPCRouter) {
        router.register(V1(index: index))
        router.register(V1alpha(index: index))
    }

    struct V1: Grpc_Reflection_V1_ServerReflection.ServiceProtocol {
        let index: ReflectionIndex

        func serverReflectionInfo(
            request: RequestStream<Grpc_Reflection_V1_ServerReflectionRequest>,
            response: ResponseWriter<Grpc_Reflection_V1_ServerReflectionResponse>, context: ServerContext
        ) async throws {
            for try await message in request { try await response.write(ReflectionV1.response(to: message, index: index)) }
        }
    }

    struct V1alpha: Grpc_Reflection_V1alpha_ServerReflection.ServiceProtocol {
        let index: ReflectionIndex

        func serverReflectionInfo(
            request: RequestStream<Grpc_Reflection_V1alpha_ServerReflectionRequest>,
            response: ResponseWriter<Grpc_Reflection_V1alpha_ServerReflectionResponse>, context: ServerContext
        ) async throws {
            for try await message in request { try await response.write(ReflectionV1alpha.response(to: message, index: index)) }
        }
    }
}

/// What reflection answers, independent of the protocol version.
struct ReflectionIndex: Sendable {
    enum Answer {
        case files([[UInt8]])
        case services([String])
        case error(code: RPCStatusCode, message: String)
    }

    let files: [String: ProtoFileDescriptor]
    let services: [String]

    init(files: [ProtoFileDescriptor], services: [String]) {
        self.files = Dictionary(files.map { ($0.name, $0) }, uniquingKeysWith: { first, _ in first })
        self.services = services
    }

    /// The file and everything it imports, the file first.
    func fileWithDependencies(_ name: String) -> Answer {
        guard files[name] != nil else { return .error(code: .notFound, message: "no file named \(name)") }
        var seen: Set<String> = []
        var ordered: [[UInt8]] = []
        var pending = [name]
        while let next = pending.first {
            pending.removeFirst()
            guard !seen.contains(next), let file = files[next] else { continue }
            seen.insert(next)
            ordered.append(file.serializedDescriptor)
            pending += file.dependencies
        }
        return .files(ordered)
    }

    func fileContaining(symbol: String) -> Answer {
        guard let file = files.values.first(where: { $0.symbols.contains(symbol) }) else {
            return .error(code: .notFound, message: "no symbol named \(symbol)")
        }
        return fileWithDependencies(file.name)
    }
}

/// The v1 wire types over ``ReflectionIndex``.
enum ReflectionV1 {
    typealias Request = Grpc_Reflection_V1_ServerReflectionRequest
    typealias Response = Grpc_Reflection_V1_ServerReflectionResponse

    static func response(to request: Request, index: ReflectionIndex) -> Response {
        var response = Response()
        response.validHost = request.host
        response.originalRequest = request
        let answer: ReflectionIndex.Answer = switch request.messageRequest {
        case .fileByFilename(let name)?: index.fileWithDependencies(name)
        case .fileContainingSymbol(let symbol)?: index.fileContaining(symbol: symbol)
        case .listServices?: .services(index.services)
        case .fileContainingExtension?, .allExtensionNumbersOfType?:
            .error(code: .notFound, message: "this server declares no extensions")
        case nil: .error(code: .invalidArgument, message: "the request names no message_request")
        }
        switch answer {
        case .files(let files):
            var body = Grpc_Reflection_V1_FileDescriptorResponse()
            body.fileDescriptorProto = files
            response.messageResponse = .fileDescriptorResponse(body)
        case .services(let names):
            var body = Grpc_Reflection_V1_ListServiceResponse()
            body.service = names.map { name in
                var service = Grpc_Reflection_V1_ServiceResponse()
                service.name = name
                return service
            }
            response.messageResponse = .listServicesResponse(body)
        case .error(let code, let message):
            var body = Grpc_Reflection_V1_ErrorResponse()
            body.errorCode = Int32(code.rawValue)
            body.errorMessage = message
            response.messageResponse = .errorResponse(body)
        }
        return response
    }
}

/// The v1alpha wire types over ``ReflectionIndex`` (same shapes, older package).
enum ReflectionV1alpha {
    typealias Request = Grpc_Reflection_V1alpha_ServerReflectionRequest
    typealias Response = Grpc_Reflection_V1alpha_ServerReflectionResponse

    static func response(to request: Request, index: ReflectionIndex) -> Response {
        // v1alpha and v1 share field numbers: translate through v1 to keep one implementation.
        let v1Request = (try? Grpc_Reflection_V1_ServerReflectionRequest(serializedBytes: request.serializedBytes())) ?? .init()
        let v1Response = ReflectionV1.response(to: v1Request, index: index)
        return (try? Response(serializedBytes: v1Response.serializedBytes())) ?? Response()
    }
}
