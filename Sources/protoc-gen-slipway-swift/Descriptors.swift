import CProtobufC
import CProtocPlugin

/// The kind of a protobuf field's value, as in `FieldDescriptorProto.Type`.
enum FieldKind: Int {
    case double = 1, float, int64, uint64, int32, fixed64, fixed32, bool, string, group, message, bytes
    case uint32, `enum`, sfixed32, sfixed64, sint32, sint64
}

/// One field of a message.
struct FieldInfo {
    var name: String
    var number: Int32
    var kind: FieldKind
    var isRepeated: Bool
    /// The fully qualified type name without the leading dot, for message and enum fields.
    var typeName: String
    /// The index of the containing oneof in the message's `oneof_decl`, synthetic ones included.
    var oneofIndex: Int?
    /// A proto3 `optional` field (member of a synthetic oneof).
    var isProto3Optional: Bool
}

/// A oneof that is written in the .proto file (not the synthetic one of a proto3 `optional` field).
struct OneofInfo {
    var name: String
    /// Fields of the oneof, in declaration order.
    var fields: [FieldInfo]
}

/// One message type, with its nested types.
struct MessageInfo {
    var name: String
    var fullName: String
    var fields: [FieldInfo]
    var oneofs: [OneofInfo]
    var messages: [MessageInfo]
    var enums: [EnumInfo]
    var isMapEntry: Bool

    /// The index of a field in protoc-c's descriptor: its rank among the fields sorted by number.
    func cIndex(of field: FieldInfo) -> Int {
        fields.filter { $0.number < field.number }.count
    }
}

/// One enum type.
struct EnumInfo {
    var name: String
    var fullName: String
    var values: [(name: String, number: Int32)]
}

/// One RPC method.
struct MethodInfo {
    var name: String
    var inputType: String
    var outputType: String
    var clientStreaming: Bool
    var serverStreaming: Bool
}

/// One service.
struct ServiceInfo {
    var name: String
    var fullName: String
    var methods: [MethodInfo]
}

/// One .proto file as protoc described it.
struct FileInfo {
    var name: String
    var package: String
    var syntax: String
    var dependencies: [String]
    var messages: [MessageInfo]
    var enums: [EnumInfo]
    var services: [ServiceInfo]
    /// The `FileDescriptorProto` re-serialized with protobuf-c.
    var serializedDescriptor: [UInt8]
}

/// Reads a C string that may be NULL.
func swiftString(_ pointer: UnsafeMutablePointer<CChar>?) -> String {
    pointer.map { String(cString: $0) } ?? ""
}

/// The elements of a protobuf-c repeated field of pointers.
func elements<T>(_ count: Int, _ base: UnsafeMutablePointer<UnsafeMutablePointer<T>?>?) -> [UnsafeMutablePointer<T>] {
    guard count > 0, let base else { return [] }
    return (0..<count).compactMap { base[$0] }
}

/// Converts protobuf-c's descriptor structs into the Swift values above.
enum DescriptorReader {
    static func file(_ file: UnsafeMutablePointer<Google__Protobuf__FileDescriptorProto>) -> FileInfo {
        let proto = file.pointee
        let package = swiftString(proto.package)
        let prefix = package.isEmpty ? "" : package + "."
        let size = protobuf_c_message_get_packed_size(UnsafeRawPointer(file).assumingMemoryBound(to: ProtobufCMessage.self))
        let bytes = [UInt8](unsafeUninitializedCapacity: size) { buffer, count in
            count = size == 0 ? 0 : google__protobuf__file_descriptor_proto__pack(file, buffer.baseAddress!)
        }
        return FileInfo(
            name: swiftString(proto.name),
            package: package,
            syntax: proto.syntax.map { String(cString: $0) } ?? "proto2",
            dependencies: (0..<proto.n_dependency).map { swiftString(proto.dependency[$0]) },
            messages: elements(proto.n_message_type, proto.message_type).map { message($0, prefix: prefix) },
            enums: elements(proto.n_enum_type, proto.enum_type).map { enumType($0, prefix: prefix) },
            services: elements(proto.n_service, proto.service).map { service($0, prefix: prefix) },
            serializedDescriptor: bytes
        )
    }

    static func message(_ message: UnsafeMutablePointer<Google__Protobuf__DescriptorProto>, prefix: String) -> MessageInfo {
        let proto = message.pointee
        let name = swiftString(proto.name)
        let fullName = prefix + name
        let fields = elements(proto.n_field, proto.field).map(field)
        let oneofNames = elements(proto.n_oneof_decl, proto.oneof_decl).map { swiftString($0.pointee.name) }
        let oneofs = oneofNames.enumerated().compactMap { index, oneofName -> OneofInfo? in
            let members = fields.filter { $0.oneofIndex == index }
            if members.count == 1 && members[0].isProto3Optional { return nil }
            return OneofInfo(name: oneofName, fields: members)
        }
        return MessageInfo(
            name: name,
            fullName: fullName,
            fields: fields,
            oneofs: oneofs,
            messages: elements(proto.n_nested_type, proto.nested_type).map { self.message($0, prefix: fullName + ".") },
            enums: elements(proto.n_enum_type, proto.enum_type).map { enumType($0, prefix: fullName + ".") },
            isMapEntry: proto.options.map { $0.pointee.has_map_entry != 0 && $0.pointee.map_entry != 0 } ?? false
        )
    }

    static func field(_ field: UnsafeMutablePointer<Google__Protobuf__FieldDescriptorProto>) -> FieldInfo {
        let proto = field.pointee
        var typeName = swiftString(proto.type_name)
        if typeName.hasPrefix(".") { typeName.removeFirst() }
        return FieldInfo(
            name: swiftString(proto.name),
            number: proto.number,
            kind: FieldKind(rawValue: Int(proto.type.rawValue)) ?? .group,
            isRepeated: Int(proto.label.rawValue) == 3,
            typeName: typeName,
            oneofIndex: proto.has_oneof_index != 0 ? Int(proto.oneof_index) : nil,
            isProto3Optional: proto.has_proto3_optional != 0 && proto.proto3_optional != 0
        )
    }

    static func enumType(_ enumType: UnsafeMutablePointer<Google__Protobuf__EnumDescriptorProto>, prefix: String) -> EnumInfo {
        let proto = enumType.pointee
        let name = swiftString(proto.name)
        return EnumInfo(
            name: name,
            fullName: prefix + name,
            values: elements(proto.n_value, proto.value).map { (swiftString($0.pointee.name), $0.pointee.number) }
        )
    }

    static func service(_ service: UnsafeMutablePointer<Google__Protobuf__ServiceDescriptorProto>, prefix: String) -> ServiceInfo {
        let proto = service.pointee
        let name = swiftString(proto.name)
        let methods = elements(proto.n_method, proto.method).map { method -> MethodInfo in
            let m = method.pointee
            return MethodInfo(
                name: swiftString(m.name),
                inputType: String(swiftString(m.input_type).drop { $0 == "." }),
                outputType: String(swiftString(m.output_type).drop { $0 == "." }),
                clientStreaming: m.has_client_streaming != 0 && m.client_streaming != 0,
                serverStreaming: m.has_server_streaming != 0 && m.server_streaming != 0
            )
        }
        return ServiceInfo(name: name, fullName: prefix + name, methods: methods)
    }
}
