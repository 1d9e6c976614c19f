/// Emits a namespace enum per service, with one `ProtoMethod` type per RPC.
struct ServiceEmitter {
    let registry: TypeRegistry

    func emit(_ service: ServiceInfo, package: String, into out: inout CodeWriter) throws(GeneratorError) {
        out.line("/// The service `\(service.fullName)`.")
        try out.block("public enum \(Naming.packagePrefix(package))\(service.name) {") { (out: inout CodeWriter) throws(GeneratorError) in
            out.line("/// The fully qualified service name.")
            out.line("public static let name = \(service.fullName.swiftLiteral)")
            for method in service.methods {
                out.line()
                let kind = switch (method.clientStreaming, method.serverStreaming) {
                case (false, false): "unary"
                case (false, true): "server-streaming"
                case (true, false): "client-streaming"
                case (true, true): "bidirectional-streaming"
                }
                out.line("/// The \(kind) method `\(service.fullName)/\(method.name)`.")
                try out.block("public enum \(Naming.member(method.name)): ProtoMethod {") { (out: inout CodeWriter) throws(GeneratorError) in
                    out.line("public typealias Input = \(try registry.swiftName(method.inputType))")
                    out.line("public typealias Output = \(try registry.swiftName(method.outputType))")
                    out.line("public static let serviceName = \(service.fullName.swiftLiteral)")
                    out.line("public static let methodName = \(method.name.swiftLiteral)")
                    out.line("public static let clientStreaming = \(method.clientStreaming)")
                    out.line("public static let serverStreaming = \(method.serverStreaming)")
                }
            }
        }
    }
}
