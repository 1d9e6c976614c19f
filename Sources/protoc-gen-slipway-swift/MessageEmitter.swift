/// Emits a Swift struct (and its nested types) for each message.
struct MessageEmitter {
    let registry: TypeRegistry
    var fieldCode: FieldCode { FieldCode(registry: registry) }

    /// The Swift property name of a field or oneof.
    static func propertyName(_ name: String) -> String { Naming.member(Naming.lowerCamel(name)) }

    /// The Swift type name of a oneof's enum.
    static func oneofTypeName(_ oneof: OneofInfo) -> String { "OneOf_" + Naming.upperCamel(oneof.name) }

    func emit(_ message: MessageInfo, into out: inout CodeWriter) throws(GeneratorError) {
        if message.isMapEntry { return }
        let swiftName = try registry.swiftName(message.fullName)
        let localName = String(swiftName.split(separator: ".").last!)
        out.line("/// The message `\(message.fullName)`.")
        try out.block("public struct \(localName): ProtoCMessage, Hashable {") { (out: inout CodeWriter) throws(GeneratorError) in
            out.line("public static let protoMessageName = \(message.fullName.swiftLiteral)")
            out.line("public static var protoCDescriptor: UnsafePointer<ProtobufCMessageDescriptor> { \(Naming.cDescriptorAccessor(fullName: message.fullName))() }")
            try emitProperties(message, into: &out)
            for oneof in message.oneofs { try emitOneofType(oneof, into: &out) }
            out.line()
            out.line("public init() {}")
            out.line()
            try emitWrite(message, into: &out)
            out.line()
            try emitRead(message, into: &out)
            for nested in message.enums {
                out.line()
                try EnumEmitter(registry: registry).emit(nested, into: &out)
            }
            for nested in message.messages where !nested.isMapEntry {
                out.line()
                try emit(nested, into: &out)
            }
        }
    }

    private func emitProperties(_ message: MessageInfo, into out: inout CodeWriter) throws(GeneratorError) {
        var emittedOneofs: Set<String> = []
        if !message.fields.isEmpty { out.line() }
        for field in message.fields {
            if let oneof = realOneof(field, in: message) {
                guard emittedOneofs.insert(oneof.name).inserted else { continue }
                out.line("/// The oneof `\(oneof.name)`.")
                out.line("public var \(Self.propertyName(oneof.name)): \(Self.oneofTypeName(oneof))? = nil")
                continue
            }
            let name = Self.propertyName(field.name)
            let type = try fieldCode.propertyType(field)
            if registry.mapEntry(field) != nil {
                out.line("public var \(name): \(type) = [:]")
            } else if field.isRepeated {
                out.line("public var \(name): \(type) = []")
            } else if field.isProto3Optional || field.kind == .message {
                out.line("public var \(name): \(type)? = nil")
            } else {
                out.line("public var \(name): \(type) = \(fieldCode.defaultValue(field))")
            }
        }
    }

    private func realOneof(_ field: FieldInfo, in message: MessageInfo) -> OneofInfo? {
        guard field.oneofIndex != nil, !field.isProto3Optional else { return nil }
        return message.oneofs.first { $0.fields.contains { $0.number == field.number } }
    }

    private func emitOneofType(_ oneof: OneofInfo, into out: inout CodeWriter) throws(GeneratorError) {
        out.line()
        out.line("/// The members of the oneof `\(oneof.name)`.")
        try out.block("public enum \(Self.oneofTypeName(oneof)): Sendable, Hashable {") { (out: inout CodeWriter) throws(GeneratorError) in
            for field in oneof.fields {
                out.line("case \(Self.propertyName(field.name))(\(try fieldCode.elementType(field)))")
            }
        }
    }

    private func emitWrite(_ message: MessageInfo, into out: inout CodeWriter) throws(GeneratorError) {
        try out.block("public func protoCWrite(to writer: ProtoCWriter) {") { (out: inout CodeWriter) throws(GeneratorError) in
            for field in message.fields where field.oneofIndex == nil {
                let value = "self.\(Self.propertyName(field.name))"
                out.line(try fieldCode.write(field, index: message.cIndex(of: field), value: value, writer: "writer"))
            }
            for field in message.fields where field.isProto3Optional {
                let statement = try fieldCode.write(field, index: message.cIndex(of: field), value: "value", writer: "writer")
                out.line("if let value = self.\(Self.propertyName(field.name)) { \(statement) }")
            }
            for oneof in message.oneofs {
                try out.block("switch self.\(Self.propertyName(oneof.name)) {") { (out: inout CodeWriter) throws(GeneratorError) in
                    for field in oneof.fields {
                        let statement = try fieldCode.write(field, index: message.cIndex(of: field), value: "value", writer: "writer")
                        out.line("case .\(Self.propertyName(field.name))(let value)?: \(statement)")
                    }
                    out.line("case nil: break")
                }
            }
        }
    }

    private func emitRead(_ message: MessageInfo, into out: inout CodeWriter) throws(GeneratorError) {
        try out.block("public init(protoCReader reader: ProtoCReader) {") { (out: inout CodeWriter) throws(GeneratorError) in
            out.line("self.init()")
            for field in message.fields where field.oneofIndex == nil {
                let value = try fieldCode.read(field, index: message.cIndex(of: field), reader: "reader")
                out.line("self.\(Self.propertyName(field.name)) = \(value)")
            }
            for field in message.fields where field.isProto3Optional {
                let index = message.cIndex(of: field)
                let value = try fieldCode.read(field, index: index, reader: "reader")
                out.line("if reader.has(\(index)) { self.\(Self.propertyName(field.name)) = \(value) }")
            }
            for oneof in message.oneofs {
                guard let first = oneof.fields.first else { continue }
                try out.block("switch reader.oneofCase(\(message.cIndex(of: first))) {") { (out: inout CodeWriter) throws(GeneratorError) in
                    for field in oneof.fields {
                        let value = try fieldCode.readValue(field, index: message.cIndex(of: field), reader: "reader")
                        out.line("case \(field.number): self.\(Self.propertyName(oneof.name)) = .\(Self.propertyName(field.name))(\(value))")
                    }
                    out.line("default: break")
                }
            }
        }
    }
}
