// protoc-gen-slipway-swift: a protoc plugin emitting Swift value types backed by protobuf-c.
// protoc writes a CodeGeneratorRequest to stdin; we answer with a CodeGeneratorResponse on stdout.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import CProtobufC
import CProtocPlugin

/// Reads all of standard input.
func readStandardInput() -> [UInt8] {
    var data: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65536)
    while true {
        let count = chunk.withUnsafeMutableBytes { read(0, $0.baseAddress, $0.count) }
        if count < 0 && errno == EINTR { continue }
        if count <= 0 { break }
        data += chunk[0..<count]
    }
    return data
}

/// Writes all of `bytes` to standard output.
func writeStandardOutput(_ bytes: [UInt8]) {
    var offset = 0
    while offset < bytes.count {
        let written = bytes.withUnsafeBytes { write(1, $0.baseAddress! + offset, $0.count - offset) }
        if written < 0 && errno == EINTR { continue }
        if written <= 0 { exit(1) }
        offset += written
    }
}

/// Generates every requested file; returns (file name, content) pairs.
func generate(_ request: UnsafeMutablePointer<Google__Protobuf__Compiler__CodeGeneratorRequest>) throws(GeneratorError) -> [(String, String)] {
    let files = elements(request.pointee.n_proto_file, request.pointee.proto_file).map(DescriptorReader.file)
    let registry = TypeRegistry(files: files)
    let wanted = (0..<request.pointee.n_file_to_generate).map { swiftString(request.pointee.file_to_generate[$0]) }
    var outputs: [(String, String)] = []
    for name in wanted {
        guard let file = files.first(where: { $0.name == name }) else { throw GeneratorError("\(name) is not in the request") }
        outputs.append((Naming.outputFile(name), try FileEmitter(registry: registry).emit(file)))
        if !file.services.isEmpty {
            let byName = Dictionary(files.map { ($0.name, $0) }, uniquingKeysWith: { first, _ in first })
            outputs.append((Naming.rpcOutputFile(name), try RPCEmitter(registry: registry, files: byName).emit(file)))
        }
    }
    return outputs
}

/// Packs a CodeGeneratorResponse with protobuf-c; C strings are duplicated and freed after packing.
func packResponse(files: [(String, String)], error: String?) -> [UInt8] {
    var allocations: [UnsafeMutableRawPointer?] = []
    defer { allocations.forEach { free($0) } }
    func duplicate(_ string: String) -> UnsafeMutablePointer<CChar> {
        let copy = strdup(string)!
        allocations.append(copy)
        return copy
    }
    var response = Google__Protobuf__Compiler__CodeGeneratorResponse()
    google__protobuf__compiler__code_generator_response__init(&response)
    response.has_supported_features = 1
    response.supported_features = UInt64(GOOGLE__PROTOBUF__COMPILER__CODE_GENERATOR_RESPONSE__FEATURE__FEATURE_PROTO3_OPTIONAL.rawValue)
    if let error { response.error = duplicate(error) }
    let entries = UnsafeMutablePointer<Google__Protobuf__Compiler__CodeGeneratorResponse__File>.allocate(capacity: max(files.count, 1))
    let pointers = UnsafeMutablePointer<UnsafeMutablePointer<Google__Protobuf__Compiler__CodeGeneratorResponse__File>?>.allocate(capacity: max(files.count, 1))
    defer { entries.deallocate(); pointers.deallocate() }
    for (index, file) in files.enumerated() {
        google__protobuf__compiler__code_generator_response__file__init(entries + index)
        entries[index].name = duplicate(file.0)
        entries[index].content = duplicate(file.1)
        pointers[index] = entries + index
    }
    response.n_file = files.count
    response.file = pointers
    let size = google__protobuf__compiler__code_generator_response__get_packed_size(&response)
    return [UInt8](unsafeUninitializedCapacity: size) { buffer, count in
        count = size == 0 ? 0 : google__protobuf__compiler__code_generator_response__pack(&response, buffer.baseAddress!)
    }
}

let input = readStandardInput()
guard let request = input.withUnsafeBufferPointer({
    google__protobuf__compiler__code_generator_request__unpack(nil, $0.count, $0.baseAddress)
}) else {
    let message = "protoc-gen-slipway-swift: cannot decode the CodeGeneratorRequest on stdin (run me through protoc)\n"
    _ = message.withCString { write(2, $0, strlen($0)) }
    exit(1)
}
do {
    let files = try generate(request)
    writeStandardOutput(packResponse(files: files, error: nil))
} catch {
    writeStandardOutput(packResponse(files: [], error: error.message))
}
google__protobuf__compiler__code_generator_request__free_unpacked(request, nil)
