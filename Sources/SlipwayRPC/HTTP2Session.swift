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
    /// A PING acknowledgement arrived.
    func sessionDidReceivePingAck(_ session: HTTP2Session)
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
        nghttp2_session_callbacks_new(&callbacks)
        defer { nghttp2_session_callbacks_del(callbacks) }
        HTTP2Session.installCallbacks(callbacks)

        var option: OpaquePointer?
        nghttp2_option_new(&option)
        defer { nghttp2_option_del(option) }
        // The application consumes flow-control window as messages are read: backpressure to the peer.
        nghttp2_option_set_no_auto_window_update(option, 1)
        nghttp2_option_set_max_send_header_block_length(option, 64 * 1024)
        nghttp2_option_set_peer_max_concurrent_streams(option, 100)

        let userData = Unmanaged.passUnretained(self).toOpaque()
        switch role {
        case .server: nghttp2_session_server_new2(&raw, callbacks, userData, option)
        case .client: nghttp2_session_client_new2(&raw, callbacks, userData, option)
        }

        var settings = [
            nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS.rawValue), value: UInt32(limits.maxConcurrentStreams)),
            nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE.rawValue), value: UInt32(limits.initialStreamWindow)),
            nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE.rawValue), value: UInt32(limits.maxHeaderListSize)),
        ]
        if role == .client {
            settings.append(nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_ENABLE_PUSH.rawValue), value: 0))
        }
        nghttp2_submit_settings(raw, UInt8(NGHTTP2_FLAG_NONE.rawValue), settings, settings.count)
        nghttp2_session_set_local_window_size(raw, UInt8(NGHTTP2_FLAG_NONE.rawValue), 0, Int32(limits.connectionWindow))
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

    /// Submits a HEADERS block. `dataProvider` true attaches our data source (the body follows);
    /// false ends the stream with the headers.
    func submitResponse(streamID: Int32, headers: [(String, String)], hasBody: Bool) {
        withNameValues(headers) { nva, count in
            if hasBody {
                var provider = HTTP2Session.dataProvider
                _ = nghttp2_submit_response(raw, streamID, nva, count, &provider)
            } else {
                _ = nghttp2_submit_response(raw, streamID, nva, count, nil)
            }
        }
    }

    /// Submits trailers (a HEADERS block with END_STREAM).
    func submitTrailers(streamID: Int32, headers: [(String, String)]) {
        withNameValues(headers) { nva, count in
            _ = nghttp2_submit_trailer(raw, streamID, nva, count)
        }
    }

    /// Opens a client stream with our data source for the body; returns the stream id or nil.
    func submitRequest(headers: [(String, String)]) -> Int32? {
        withNameValues(headers) { nva, count in
            var provider = HTTP2Session.dataProvider
            let id = nghttp2_submit_request(raw, nil, nva, count, &provider, nil)
            return id > 0 ? id : nil
        }
    }

    func resumeData(streamID: Int32) {
        _ = nghttp2_session_resume_data(raw, streamID)
    }

    func consume(streamID: Int32, bytes: Int) {
        guard bytes > 0 else { return }
        _ = nghttp2_session_consume(raw, streamID, bytes)
    }

    func resetStream(_ streamID: Int32, errorCode: UInt32) {
        _ = nghttp2_submit_rst_stream(raw, UInt8(NGHTTP2_FLAG_NONE.rawValue), streamID, errorCode)
    }

    func submitPing() {
        _ = nghttp2_submit_ping(raw, UInt8(NGHTTP2_FLAG_NONE.rawValue), nil)
    }

    /// First step of a graceful shutdown: tells the client no new streams will be accepted soon.
    func submitShutdownNotice() {
        _ = nghttp2_submit_shutdown_notice(raw)
    }

    /// GOAWAY with the last stream this side processed.
    func submitGoAway(errorCode: UInt32, message: String = "") {
        let last = nghttp2_session_get_last_proc_stream_id(raw)
        var bytes = Array(message.utf8)
        _ = nghttp2_submit_goaway(raw, UInt8(NGHTTP2_FLAG_NONE.rawValue), last, errorCode, &bytes, bytes.count)
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
                if UInt32(hd.flags) & NGHTTP2_FLAG_ACK.rawValue != 0 { session.delegate?.sessionDidReceivePingAck(session) }
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
