package source

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
)

// etcdConnectTimeout bounds the wait for an endpoint to answer; the
// snapshot itself may take as long as it needs.
const etcdConnectTimeout = 20 * time.Second

// etcdMaxMessage bounds one message of the stream; etcd sends 32 KiB.
const etcdMaxMessage = 4 << 20

// openEtcd streams a snapshot from the maintenance API: one consistent
// point in time of the whole keyspace, taken by the server without a
// temporary file on this side.
//
// The call is gRPC's wire format spoken directly over the standard
// library's HTTP/2: one streaming call whose messages hold a single bytes
// field needs no more. The gRPC client library would be a third of this
// program's code, mapped into every run's memory for this one source, and
// etcd's JSON gateway, the other way in, made the server encode the
// snapshot in base64 JSON: 2.3x slower, on the server's CPU.
func openEtcd(ctx context.Context, s Spec) (string, io.ReadCloser, error) {
	if len(s.Endpoints) == 0 {
		return "", nil, errors.New("etcd: no endpoints")
	}
	tc, err := etcdTLS(s)
	if err != nil {
		return "", nil, err
	}
	protocols := new(http.Protocols)
	protocols.SetHTTP2(true)
	protocols.SetUnencryptedHTTP2(true)
	client := &http.Client{Transport: &http.Transport{
		Protocols:             protocols,
		DialContext:           (&net.Dialer{Timeout: etcdConnectTimeout}).DialContext,
		TLSClientConfig:       tc,
		TLSHandshakeTimeout:   etcdConnectTimeout,
		ResponseHeaderTimeout: etcdConnectTimeout,
	}}
	// The first endpoint that answers serves the snapshot.
	for _, ep := range s.Endpoints {
		var base string
		if base, err = etcdURL(ep, tc != nil); err != nil {
			return "", nil, err
		}
		var body io.ReadCloser
		body, err = etcdCall(ctx, client, base+"/etcdserverpb.Maintenance/Snapshot")
		if err == nil {
			return "snapshot.db", &etcdStream{body: body, client: client, h: sha256.New()}, nil
		}
	}
	client.CloseIdleConnections()
	return "", nil, fmt.Errorf("etcd %s: %w", strings.Join(s.Endpoints, ","), err)
}

// etcdURL gives an endpoint a scheme: etcd's own tools take host:port.
// Unix sockets (unix://), which etcd can listen on, are not supported.
func etcdURL(ep string, useTLS bool) (string, error) {
	ep = strings.TrimRight(ep, "/")
	scheme, _, ok := strings.Cut(ep, "://")
	switch {
	case !ok && useTLS:
		return "https://" + ep, nil
	case !ok:
		return "http://" + ep, nil
	case scheme == "http" || scheme == "https":
		return ep, nil
	}
	return "", fmt.Errorf("etcd endpoint %s: only http://, https:// and host:port endpoints are supported", ep)
}

// CheckEtcdEndpoint reports an etcd endpoint that cannot be used, for
// checking a cluster file before anything runs.
func CheckEtcdEndpoint(ep string) error {
	_, err := etcdURL(ep, false)
	return err
}

// etcdTLS is the client's TLS configuration from the spec's files, or nil
// when none is given (an https endpoint then uses the system's roots).
func etcdTLS(s Spec) (*tls.Config, error) {
	if s.CertFile == "" && s.KeyFile == "" && s.CAFile == "" {
		return nil, nil
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if s.CAFile != "" {
		pem, err := os.ReadFile(s.CAFile)
		if err != nil {
			return nil, fmt.Errorf("etcd TLS: %w", err)
		}
		tc.RootCAs = x509.NewCertPool()
		if !tc.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("etcd TLS: no PEM certificate in %s", s.CAFile)
		}
	}
	if s.CertFile != "" || s.KeyFile != "" {
		cert, err := tls.LoadX509KeyPair(s.CertFile, s.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("etcd TLS: %w", err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	return tc, nil
}

// etcdCall starts a gRPC call with an empty request message and returns
// the response body, the stream of length-prefixed response messages.
func etcdCall(ctx context.Context, client *http.Client, method string) (io.ReadCloser, error) {
	// A message is a compression flag, a big-endian length and the
	// message; an empty request message is five zero bytes.
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, method, bytes.NewReader(make([]byte, 5)))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/grpc")
	req.Header.Set("TE", "trailers")
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		return nil, fmt.Errorf("%s: %s", method, resp.Status)
	}
	// A call that fails at once answers with its status in the headers.
	if err := grpcStatus(resp.Header); err != nil {
		resp.Body.Close()
		return nil, err
	}
	return &grpcBody{resp: resp}, nil
}

// grpcStatus is the error that a call's status (in its trailers, or its
// headers when it failed at once) reports, or nil for success or none.
func grpcStatus(h http.Header) error {
	code := h.Get("Grpc-Status")
	if code == "" || code == "0" {
		return nil
	}
	msg, err := url.PathUnescape(h.Get("Grpc-Message"))
	if err != nil {
		msg = h.Get("Grpc-Message")
	}
	return fmt.Errorf("gRPC status %s: %s", code, msg)
}

// errNoStatus is a call's end without the status that every gRPC reply ends
// with: the server or a proxy cut it, whether inside a message or not.
var errNoStatus = errors.New("stream ended without a gRPC status")

// grpcBody is a call's response body; its end reports the call's status.
type grpcBody struct {
	resp *http.Response
}

func (b *grpcBody) Read(p []byte) (int, error) {
	n, err := b.resp.Body.Read(p)
	if err == io.EOF {
		if serr := grpcStatus(b.resp.Trailer); serr != nil {
			return n, serr
		}
		if b.resp.Trailer.Get("Grpc-Status") == "" {
			return n, errNoStatus
		}
	}
	return n, err
}

func (b *grpcBody) Close() error { return b.resp.Body.Close() }

// etcdStream is the snapshot, read from SnapshotResponse messages (blob is
// their field 3). The server ends it with the SHA-256 of what came before;
// checking it is how Close knows the snapshot is whole.
type etcdStream struct {
	body   io.ReadCloser
	client *http.Client // its connection is closed with the stream
	msg    []byte       // the message being read
	buf    []byte       // its blob's bytes not yet read
	h      hash.Hash
	tail   []byte // the last sha256.Size bytes seen, not yet hashed
	eof    bool
	err    error
	closed bool
}

func (s *etcdStream) Read(p []byte) (int, error) {
	for len(s.buf) == 0 {
		if s.err != nil {
			return 0, s.err
		}
		if s.eof {
			return 0, io.EOF
		}
		if err := s.next(); err == io.EOF {
			s.eof = true
		} else if err != nil {
			s.err = fmt.Errorf("etcd snapshot: %w", err)
		}
	}
	n := copy(p, s.buf)
	s.buf = s.buf[n:]
	return n, nil
}

// cutShort names a stream's end inside a message for what it is.
func cutShort(err error) error {
	if err == io.ErrUnexpectedEOF {
		return errors.New("stream cut inside a message")
	}
	return err
}

// next reads the next message and sets buf to its blob.
func (s *etcdStream) next() error {
	var head [5]byte
	if _, err := io.ReadFull(s.body, head[:]); err != nil {
		return cutShort(err)
	}
	size := binary.BigEndian.Uint32(head[1:])
	switch {
	case head[0] != 0:
		return errors.New("compressed message (not asked for)")
	case size > etcdMaxMessage:
		return fmt.Errorf("message of %d bytes", size)
	}
	if cap(s.msg) < int(size) {
		s.msg = make([]byte, size)
	}
	s.msg = s.msg[:size]
	if _, err := io.ReadFull(s.body, s.msg); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return cutShort(err)
	}
	for b := s.msg; len(b) > 0; {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return protowire.ParseError(n)
		}
		b = b[n:]
		if num == 3 && typ == protowire.BytesType {
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return protowire.ParseError(n)
			}
			s.buf = v
			b = b[n:]
			continue
		}
		if n = protowire.ConsumeFieldValue(num, typ, b); n < 0 {
			return protowire.ParseError(n)
		}
		b = b[n:]
	}
	s.hashLagging(s.buf)
	return nil
}

// hashLagging hashes everything but the last sha256.Size bytes seen,
// which may be the trailer.
func (s *etcdStream) hashLagging(p []byte) {
	if len(p) >= sha256.Size {
		s.h.Write(s.tail)
		s.h.Write(p[:len(p)-sha256.Size])
		s.tail = append(s.tail[:0], p[len(p)-sha256.Size:]...)
		return
	}
	s.tail = append(s.tail, p...)
	if extra := len(s.tail) - sha256.Size; extra > 0 {
		s.h.Write(s.tail[:extra])
		s.tail = append(s.tail[:0], s.tail[extra:]...)
	}
}

func (s *etcdStream) Close() error {
	if s.closed {
		return s.err
	}
	s.closed = true
	s.body.Close()
	if s.client != nil {
		s.client.CloseIdleConnections()
	}
	switch {
	case s.err != nil:
	case !s.eof:
		s.err = errors.New("etcd snapshot: stream closed before its end")
	case len(s.tail) != sha256.Size || !bytes.Equal(s.h.Sum(nil), s.tail):
		s.err = errors.New("etcd snapshot: incomplete or damaged (its SHA-256 trailer does not match)")
	}
	return s.err
}

// restoreEtcd writes the snapshot to a file next to the data directory
// and has etcdutl build the data directory from it. The restore goes into
// a new directory beside the target, moved into place only when complete,
// so a failure leaves the target as it was.
func restoreEtcd(ctx context.Context, t Target, r io.Reader) error {
	if t.DataDir == "" {
		return errors.New("no etcd data directory to restore into")
	}
	dataDir := filepath.Clean(t.DataDir)
	empty, err := dirEmpty(dataDir)
	if err != nil {
		return err
	}
	if !empty && !t.Overwrite {
		return fmt.Errorf("etcd data directory %s is not empty; restore into a new one or allow overwriting", dataDir)
	}
	bin, err := etcdutlBinary()
	if err != nil {
		return err
	}
	parent := filepath.Dir(dataDir)
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return err
	}
	snap, err := writeTemp(parent, ".cairn-snapshot-*.db", r)
	if err != nil {
		return err
	}
	defer os.Remove(snap)
	staging, err := os.MkdirTemp(parent, ".cairn-etcd-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(staging) // gone after the rename, unless it failed

	args := []string{"snapshot", "restore", snap, "--data-dir", staging}
	for _, f := range []struct{ flag, val string }{
		{"--name", t.Name},
		{"--initial-cluster", t.InitialCluster},
		{"--initial-advertise-peer-urls", t.InitialAdvertisePeerURLs},
		{"--initial-cluster-token", t.ClusterToken},
	} {
		if f.val != "" {
			args = append(args, f.flag, f.val)
		}
	}
	tl := &tool{name: "etcdutl", path: bin, args: args}
	if _, err := tl.output(ctx, ""); err != nil {
		return err
	}
	if !empty {
		if err := os.RemoveAll(dataDir); err != nil {
			return fmt.Errorf("remove the old data directory: %w", err)
		}
	} else if err := os.Remove(dataDir); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if err := os.Rename(staging, dataDir); err != nil {
		return fmt.Errorf("move the restored data directory into place: %w", err)
	}
	return nil
}

// etcdutlBinary finds etcdutl: $CAIRN_ETCDUTL, else PATH.
func etcdutlBinary() (string, error) {
	if p := os.Getenv("CAIRN_ETCDUTL"); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("$CAIRN_ETCDUTL: %w", err)
		}
		return p, nil
	}
	p, err := exec.LookPath("etcdutl")
	if err != nil {
		return "", errors.New("etcdutl not found in $CAIRN_ETCDUTL or PATH (etcd 3.5 and later ship it)")
	}
	return p, nil
}
