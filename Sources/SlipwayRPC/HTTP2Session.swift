import CNGHTTP2
import NIOCore

/// What a connection does with the events of its nghttp2 session. Called on the connection's event loop,
/// from inside `nghttp2_session_mem_recv` / `mem_send`: implementations may submit frames but not send.
protocol HTTP2SessionDelegate: AnyObject {
    /// A header of a HEADERS block on `streamID` (request, response or trailers).
    func session(_ session: HTTP2Session, header name: String, value: String, streamID: Int32)
    /// A complete HEADERS block arrived on `streamID`.
    func session(_ session: HTTP2Session, didReceiveHeadersOn streamID: Int32, endStream: Bool)
    /// A chunk of DATA arrived on `streamID`; `bytes` is valid only during the call.
    func session(_ session: HTTP2Session, didReceiveData bytes: UnsafeRawBufferPointer, streamID: Int32)
    /// The peer ended its side of `streamID` with a DATA frame.
    func session(_ session: HTTP2Session, didReceiveEndOfDataOn streamID: Int32)
    /// `streamID` is closed; `errorCode` is the HTTP/2 error code (0 for a clean close).
    func session(_ session: HTTP2Session, didCloseStream streamID: Int32, errorCode: UInt32)
    /// nghttp2 wants DATA for `streamID`: copy at most `buffer.count` bytes, set EOF flags, or return
    /// `NGHTTP2_ERR_DEFERRED` when nothing is ready.
    func session(_ session: HTTP2Session, readDataFor streamID: Int32, into buffer: UnsafeMutableRawBufferPointer, flags: inout UInt32) -> Int
    /// GOAWAY received.
    func session(_ session: HTTP2Session, didReceiveGoAway lastStreamID: Int32, errorCode: UInt32)
    /// A PING acknowledgement arrived, with the opaque data of the PING it answers.
    func sessionDidReceivePingAck(_ session: HTTP2Session, opaque: UInt64)
}

/// An nghttp2 session: one HTTP/2 connection's framing state, confined to one event loop.
///
/// C callbacks are non-capturing functions that recover `self` from the session's user data.
final class HTTP2Session {
    enum Role { case server, client }

    private(set) var raw: OpaquePointer?
    unowned(unsafe) var delegate: (any HTTP2SessionDelegate)?
    /// Scratch storage for header blocks, reused across submits.
    private var nameValueScratch: [UInt8] = []

    init(role: Role, limits: RPCLimits) {
        var callbacks: OpaquePointer?
        Self.require(nghttp2_session_callbacks_new(&callbacks), "nghttp2_session_callbacks_new")
        defer { nghttp2_session_callbacks_del(callbacks) }
        HTTP2Session.installCallbacks(callbacks)

        var option: OpaquePointer?
        Self.require(nghttp2_option_new(&option), "nghttp2_option_new")
        defer { nghttp2_option_del(option) }
        // The application consumes flow-control window as messages are read: backpressure to the peer.
        nghttp2_option_set_no_auto_window_update(option, 1)
        nghttp2_option_set_max_send_header_block_length(option, 64 * 1024)
        nghttp2_option_set_peer_max_concurrent_streams(option, 100)

        let userData = Unmanaged.passUnretained(self).toOpaque()
        switch role {
        case .server: Self.require(nghttp2_session_server_new2(&raw, callbacks, userData, option), "nghttp2_session_server_new2")
        case .client: Self.require(nghttp2_session_client_new2(&raw, callbacks, userData, option), "nghttp2_session_client_new2")
        }

        var settings = [
            nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS.rawValue), value: UInt32(limits.maxConcurrentStreams)),
            nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE.rawValue), value: UInt32(limits.initialStreamWindow)),
            nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE.rawValue), value: UInt32(limits.maxHeaderListSize)),
        ]
        if role == .client {
            settings.append(nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_ENABLE_PUSH.rawValue), value: 0))
        }
        Self.require(nghttp2_submit_settings(raw, UInt8(NGHTTP2_FLAG_NONE.rawValue), settings, settings.count), "nghttp2_submit_settings")
        Self.require(
            nghttp2_session_set_local_window_size(raw, UInt8(NGHTTP2_FLAG_NONE.rawValue), 0, Int32(limits.connectionWindow)),
            "nghttp2_session_set_local_window_size")
    }

    /// Set-up calls fail only when memory runs out or the arguments are wrong (a bug here): both fatal.
    private static func require(_ rv: Int32, _ call: String) {
        precondition(rv == 0, "\(call) failed: \(String(cString: nghttp2_strerror(rv)))")
    }

    /// Turns an nghttp2 return code into a thrown ``HTTP2SessionError``.
    private static func check(_ rv: Int32, _ call: String) throws(HTTP2SessionError) {
        if rv < 0 { throw HTTP2SessionError(call: call, code: rv) }
    }

    deinit {
        nghttp2_session_del(raw)
    }

    /// Feeds received bytes; returns an error message when the peer broke the protocol.
    func receive(_ bytes: UnsafeRawBufferPointer) -> String? {
        guard let base = bytes.baseAddress?.assumingMemoryBound(to: UInt8.self) else { return nil }
        let rv = nghttp2_session_mem_recv(raw, base, bytes.count)
        if rv < 0 { return String(cString: nghttp2_strerror(Int32(rv))) }
        return nil
    }

    /// Serializes pending frames into `buffer`, at most about `limit` bytes; returns false on a fatal error.
    func send(into buffer: inout ByteBuffer, limit: Int) -> Bool {
        while buffer.readableBytes < limit {
            var data: UnsafePointer<UInt8>?
            let n = nghttp2_session_mem_send(raw, &data)
            if n < 0 { return false }
            if n == 0 { break }
            buffer.writeBytes(UnsafeRawBufferPointer(start: data, count: n))
        }
        return true
    }

    var wantsRead: Bool { nghttp2_session_want_read(raw) != 0 }
    var wantsWrite: Bool { nghttp2_session_want_write(raw) != 0 }

    /// Submits a HEADERS block. `hasBody` true attaches our data source (the body follows); false
    /// ends the stream with the headers.
    func submitResponse(streamID: Int32, headers: [(String, String)], hasBody: Bool) throws(HTTP2SessionError) {
        let rv = withNameValues(headers) { nva, count in
            if hasBody {
                var provider = HTTP2Session.dataProvider
                return nghttp2_submit_response(raw, streamID, nva, count, &provider)
            }
            return nghttp2_submit_response(raw, streamID, nva, count, nil)
        }
        try Self.check(rv, "nghttp2_submit_response")
    }

    /// Submits trailers (a HEADERS block with END_STREAM).
    func submitTrailers(streamID: Int32, headers: [(String, String)]) throws(HTTP2SessionError) {
        try Self.check(withNameValues(headers) { nva, count in nghttp2_submit_trailer(raw, streamID, nva, count) }, "nghttp2_submit_trailer")
    }

    /// Opens a client stream with our data source for the body; returns the stream id.
    func submitRequest(headers: [(String, String)]) throws(HTTP2SessionError) -> Int32 {
        let id = withNameValues(headers) { nva, count in
            var provider = HTTP2Session.dataProvider
            return nghttp2_submit_request(raw, nil, nva, count, &provider, nil)
        }
        try Self.check(id, "nghttp2_submit_request")
        return id
    }

    /// Resumes a stream whose data source deferred. False: the stream is gone or had nothing
    /// deferred (NGHTTP2_ERR_INVALID_ARGUMENT), so there is nothing to resume.
    func resumeData(streamID: Int32) -> Bool {
        nghttp2_session_resume_data(raw, streamID) == 0
    }

    /// Gives `bytes` of flow-control window back to the peer (stream and connection).
    func consume(streamID: Int32, bytes: Int) throws(HTTP2SessionError) {
        guard bytes > 0 else { return }
        try Self.check(nghttp2_session_consume(raw, streamID, bytes), "nghttp2_session_consume")
    }

    func resetStream(_ streamID: Int32, errorCode: UInt32) throws(HTTP2SessionError) {
        try Self.check(nghttp2_submit_rst_stream(raw, UInt8(NGHTTP2_FLAG_NONE.rawValue), streamID, errorCode), "nghttp2_submit_rst_stream")
    }

    /// A PING carrying `opaque` (big-endian), echoed in its acknowledgement.
    func submitPing(opaque: UInt64) throws(HTTP2SessionError) {
        var data = opaque.bigEndian
        let rv = withUnsafeBytes(of: &data) { nghttp2_submit_ping(raw, UInt8(NGHTTP2_FLAG_NONE.rawValue), $0.baseAddress!.assumingMemoryBound(to: UInt8.self)) }
        try Self.check(rv, "nghttp2_submit_ping")
    }

    /// First step of a graceful shutdown (servers): GOAWAY with the largest stream id, so the
    /// client opens no more streams while the ones already on their way are still served.
    func submitShutdownNotice() throws(HTTP2SessionError) {
        try Self.check(nghttp2_submit_shutdown_notice(raw), "nghttp2_submit_shutdown_notice")
    }

    /// GOAWAY with the last stream this side processed.
    func submitGoAway(errorCode: UInt32, message: String = "") throws(HTTP2SessionError) {
        let last = nghttp2_session_get_last_proc_stream_id(raw)
        var bytes = Array(message.utf8)
        try Self.check(nghttp2_submit_goaway(raw, UInt8(NGHTTP2_FLAG_NONE.rawValue), last, errorCode, &bytes, bytes.count), "nghttp2_submit_goaway")
    }

    /// Builds an `nghttp2_nv` array over one contiguous scratch buffer (nghttp2 copies on submit).
    private func withNameValues<R>(_ headers: [(String, String)], _ body: (UnsafePointer<nghttp2_nv>, Int) -> R) -> R {
        nameValueScratch.removeAll(keepingCapacity: true)
        for (name, value) in headers {
            nameValueScratch.append(contentsOf: name.utf8)
            nameValueScratch.append(contentsOf: value.utf8)
        }
        return nameValueScratch.withUnsafeMutableBufferPointer { scratch in
            var offset = 0
            var nva = [nghttp2_nv]()
            nva.reserveCapacity(headers.count)
            for (name, value) in headers {
                let nameLength = name.utf8.count
                let valueLength = value.utf8.count
                let namePointer = scratch.baseAddress! + offset
                let valuePointer = namePointer + nameLength
                offset += nameLength + valueLength
                nva.append(nghttp2_nv(name: namePointer, value: valuePointer, namelen: nameLength, valuelen: valueLength, flags: UInt8(NGHTTP2_NV_FLAG_NONE.rawValue)))
            }
            return nva.withUnsafeBufferPointer { body($0.baseAddress!, $0.count) }
        }
    }
}

// MARK: - C callbacks

extension HTTP2Session {
    fileprivate static func from(_ userData: UnsafeMutableRawPointer?) -> HTTP2Session {
        Unmanaged<HTTP2Session>.fromOpaque(userData!).takeUnretainedValue()
    }

    static let dataProvider = nghttp2_data_provider(
        source: nghttp2_data_source(ptr: nil),
        read_callback: { _, streamID, buffer, length, flags, _, userData in
            let session = HTTP2Session.from(userData)
            var outFlags = UInt32(0)
            let n = session.delegate!.session(
                session, readDataFor: streamID,
                into: UnsafeMutableRawBufferPointer(start: buffer, count: length), flags: &outFlags)
            flags!.pointee |= outFlags
            return n
        })

    private static func installCallbacks(_ callbacks: OpaquePointer?) {
        nghttp2_session_callbacks_set_on_header_callback(callbacks) { _, frame, name, nameLength, value, valueLength, _, userData in
            let session = HTTP2Session.from(userData)
            let streamID = frame!.pointee.hd.stream_id
            let nameString = String(decoding: UnsafeBufferPointer(start: name, count: nameLength), as: UTF8.self)
            let valueString = String(decoding: UnsafeBufferPointer(start: value, count: valueLength), as: UTF8.self)
            session.delegate?.session(session, header: nameString, value: valueString, streamID: streamID)
            return 0
        }
        nghttp2_session_callbacks_set_on_frame_recv_callback(callbacks) { _, frame, userData in
            let session = HTTP2Session.from(userData)
            let hd = frame!.pointee.hd
            let endStream = UInt32(hd.flags) & NGHTTP2_FLAG_END_STREAM.rawValue != 0
            switch UInt32(hd.type) {
            case NGHTTP2_HEADERS.rawValue:
                session.delegate?.session(session, didReceiveHeadersOn: hd.stream_id, endStream: endStream)
            case NGHTTP2_DATA.rawValue:
                if endStream { session.delegate?.session(session, didReceiveEndOfDataOn: hd.stream_id) }
            case NGHTTP2_GOAWAY.rawValue:
                let goaway = frame!.pointee.goaway
                session.delegate?.session(session, didReceiveGoAway: goaway.last_stream_id, errorCode: goaway.error_code)
            case NGHTTP2_PING.rawValue:
                if UInt32(hd.flags) & NGHTTP2_FLAG_ACK.rawValue != 0 {
                    let opaque = withUnsafeBytes(of: frame!.pointee.ping.opaque_data) { $0.loadUnaligned(as: UInt64.self) }
                    session.delegate?.sessionDidReceivePingAck(session, opaque: UInt64(bigEndian: opaque))
                }
            default:
                break
            }
            return 0
        }
        nghttp2_session_callbacks_set_on_data_chunk_recv_callback(callbacks) { _, _, streamID, data, length, userData in
            let session = HTTP2Session.from(userData)
            session.delegate?.session(session, didReceiveData: UnsafeRawBufferPointer(start: data, count: length), streamID: streamID)
            return 0
        }
        nghttp2_session_callbacks_set_on_stream_close_callback(callbacks) { _, streamID, errorCode, userData in
            let session = HTTP2Session.from(userData)
            session.delegate?.session(session, didCloseStream: streamID, errorCode: errorCode)
            return 0
        }
    }
}

/// An nghttp2 call that failed: which one, and nghttp2's own words for the code.
struct HTTP2SessionError: Error, CustomStringConvertible {
    var call: String
    var code: Int32
    var description: String { "\(call): \(String(cString: nghttp2_strerror(code)))" }
}

/// HTTP/2 error codes used here (RFC 9113 section 7).
enum HTTP2ErrorCode {
    static let noError: UInt32 = 0x0
    static let protocolError: UInt32 = 0x1
    static let internalError: UInt32 = 0x2
    static let refusedStream: UInt32 = 0x7
    static let cancel: UInt32 = 0x8
    static let enhanceYourCalm: UInt32 = 0xB
}

/// Data-source return values and flags, as Swift constants.
enum HTTP2Data {
    static let deferred = Int(NGHTTP2_ERR_DEFERRED.rawValue)
    static let eof = NGHTTP2_DATA_FLAG_EOF.rawValue
    static let noEndStream = NGHTTP2_DATA_FLAG_NO_END_STREAM.rawValue
}
