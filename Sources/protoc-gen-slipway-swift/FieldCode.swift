/// The Swift type and the protobuf-c read/write code of one field.
struct FieldCode {
    let registry: TypeRegistry

    /// The Swift type of one value of the field (the element type for repeated fields).
    func elementType(_ field: FieldInfo) throws(GeneratorError) -> String {
        switch field.kind {
        case .double: return "Double"
        case .float: return "Float"
        case .int64, .sint64, .sfixed64: return "Int64"
        case .uint64, .fixed64: return "UInt64"
        case .int32, .sint32, .sfixed32: return "Int32"
        case .uint32, .fixed32: return "UInt32"
        case .bool: return "Bool"
        case .string: return "String"
        case .bytes: return "[UInt8]"
        case .enum, .message: return try registry.swiftName(field.typeName)
        case .group: throw GeneratorError("field \(field.name): groups are not supported")
        }
    }

    /// The Swift type of the stored property (without the optional of message/proto3 optional fields).
    func propertyType(_ field: FieldInfo) throws(GeneratorError) -> String {
        if let entry = registry.mapEntry(field) {
            return "[\(try elementType(entry.fields[0])): \(try elementType(entry.fields[1]))]"
        }
        let element = try elementType(field)
        return field.isRepeated ? "[\(element)]" : element
    }

    /// The proto3 default of a singular, non-optional property.
    func defaultValue(_ field: FieldInfo) -> String {
        switch field.kind {
        case .double, .float, .int64, .sint64, .sfixed64, .uint64, .fixed64, .int32, .sint32, .sfixed32, .uint32, .fixed32: return "0"
        case .bool: return "false"
        case .string: return "\"\""
        case .bytes: return "[]"
        case .enum: return ".init()"
        case .message, .group: return "nil"
        }
    }

    /// A statement storing `value` into C field `index` through `writer`.
    func write(_ field: FieldInfo, index: Int, value: String, writer: String) throws(GeneratorError) -> String {
        if let entry = registry.mapEntry(field) {
            let keyType = try elementType(entry.fields[0])
            let order = keyType == "Bool" ? "{ !$0.key && $1.key }" : "{ $0.key < $1.key }"
            let key = try write(entry.fields[0], index: 0, value: "entry.key", writer: "entryWriter")
            let mapValue = try write(entry.fields[1], index: 1, value: "entry.value", writer: "entryWriter")
            return "\(writer).setMap(\(index), \(value).sorted(by: \(order))) { entryWriter, entry in \(key); \(mapValue) }"
        }
        if field.kind == .enum {
            return "\(writer).set(\(index), \(value)\(field.isRepeated ? ".map(\\.rawValue)" : ".rawValue"))"
        }
        return "\(writer).set(\(index), \(value))"
    }

    /// An expression reading C field `index` through `reader`; messages read as optionals.
    func read(_ field: FieldInfo, index: Int, reader: String) throws(GeneratorError) -> String {
        if let entry = registry.mapEntry(field) {
            let key = try readValue(entry.fields[0], index: 0, reader: "entryReader")
            let value = try readValue(entry.fields[1], index: 1, reader: "entryReader")
            return "\(reader).map(\(index)) { entryReader in (\(key), \(value)) }"
        }
        let type = try elementType(field)
        if field.isRepeated {
            switch field.kind {
            case .bool: return "\(reader).bools(\(index))"
            case .string: return "\(reader).strings(\(index))"
            case .bytes: return "\(reader).bytesArray(\(index))"
            case .message: return "\(reader).messages(\(index), as: \(type).self)"
            case .enum: return "\(reader).get(\(index), as: [Int32].self).map { \(type)(rawValue: $0) }"
            default: return "\(reader).get(\(index), as: [\(type)].self)"
            }
        }
        switch field.kind {
        case .bool: return "\(reader).bool(\(index))"
        case .string: return "\(reader).string(\(index))"
        case .bytes: return "\(reader).bytes(\(index))"
        case .message: return "\(reader).message(\(index), as: \(type).self)"
        case .enum: return "\(type)(rawValue: \(reader).get(\(index), as: Int32.self))"
        default: return "\(reader).get(\(index), as: \(type).self)"
        }
    }

    /// Like `read`, but a missing message reads as the default message (map values, oneof members).
    func readValue(_ field: FieldInfo, index: Int, reader: String) throws(GeneratorError) -> String {
        let expression = try read(field, index: index, reader: reader)
        return field.kind == .message && !field.isRepeated ? "\(expression) ?? \(try elementType(field))()" : expression
    }
}
