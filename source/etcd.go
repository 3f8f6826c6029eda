package source

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// etcdConnectTimeout bounds the wait for an endpoint to answer; the
// snapshot itself may take as long as it needs.
const etcdConnectTimeout = 20 * time.Second

// openEtcd streams a snapshot from the maintenance API: one consistent
// point in time of the whole keyspace, taken by the server without a
// temporary file on this side. It goes through etcd's JSON gateway
// (POST /v3/maintenance/snapshot, served on the client port by default
// since etcd 3.4) rather than gRPC: a gRPC client would be a third of this
// program's code, resident in every run's memory for this one source.
func openEtcd(ctx context.Context, s Spec) (string, io.ReadCloser, error) {
	if len(s.Endpoints) == 0 {
		return "", nil, errors.New("etcd: no endpoints")
	}
	tc, err := etcdTLS(s)
	if err != nil {
		return "", nil, err
	}
	client := &http.Client{Transport: &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: etcdConnectTimeout}).DialContext,
		TLSClientConfig:       tc,
		TLSHandshakeTimeout:   etcdConnectTimeout,
		ResponseHeaderTimeout: etcdConnectTimeout,
	}}
	// The first endpoint whose status answers serves the snapshot.
	for _, ep := range s.Endpoints {
		base := etcdURL(ep, tc != nil)
		sctx, cancel := context.WithTimeout(ctx, etcdConnectTimeout)
		var st *http.Response
		st, err = etcdPost(sctx, client, base+"/v3/maintenance/status")
		if err == nil {
			_, err = io.Copy(io.Discard, st.Body)
			st.Body.Close()
		}
		cancel()
		if err != nil {
			continue
		}
		resp, err := etcdPost(ctx, client, base+"/v3/maintenance/snapshot")
		if err != nil {
			return "", nil, fmt.Errorf("etcd snapshot from %s: %w", ep, err)
		}
		return "snapshot.db", &etcdStream{body: resp.Body, dec: json.NewDecoder(resp.Body), h: sha256.New()}, nil
	}
	return "", nil, fmt.Errorf("etcd %s: %w", strings.Join(s.Endpoints, ","), err)
}

// etcdURL gives an endpoint a scheme: etcd's own tools take host:port.
func etcdURL(ep string, useTLS bool) string {
	ep = strings.TrimRight(ep, "/")
	if strings.Contains(ep, "://") {
		return ep
	}
	if useTLS {
		return "https://" + ep
	}
	return "http://" + ep
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

// etcdPost sends an empty request to one of the gateway's methods and
// returns the response when it is a success.
func etcdPost(ctx context.Context, client *http.Client, url string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader("{}"))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode == http.StatusOK {
		return resp, nil
	}
	defer resp.Body.Close()
	var e struct {
		Message string `json:"message"`
	}
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if json.Unmarshal(msg, &e) == nil && e.Message != "" {
		return nil, fmt.Errorf("%s: %s", resp.Status, e.Message)
	}
	if resp.StatusCode == http.StatusNotFound {
		return nil, fmt.Errorf("%s: no JSON gateway at %s (etcd before 3.4, or --enable-grpc-gateway=false)", resp.Status, url)
	}
	return nil, errors.New(resp.Status)
}

// etcdStream is the snapshot: the gateway sends it as a sequence of JSON
// messages, one per chunk. The server ends it with the SHA-256 of what
// came before; checking it is how Close knows the snapshot is whole.
type etcdStream struct {
	body   io.ReadCloser
	dec    *json.Decoder
	buf    []byte // the current chunk's bytes not yet read
	h      hash.Hash
	tail   []byte // the last sha256.Size bytes seen, not yet hashed
	eof    bool
	err    error
	closed bool
}

// etcdMessage is one message of the gateway's stream.
type etcdMessage struct {
	Result *struct {
		Blob []byte `json:"blob"`
	} `json:"result"`
	Error *struct {
		Message string `json:"message"`
	} `json:"error"`
}

func (s *etcdStream) Read(p []byte) (int, error) {
	for len(s.buf) == 0 {
		if s.err != nil {
			return 0, s.err
		}
		if s.eof {
			return 0, io.EOF
		}
		var m etcdMessage
		switch err := s.dec.Decode(&m); {
		case err == io.EOF:
			s.eof = true
		case err != nil:
			s.err = fmt.Errorf("etcd snapshot: %w", err)
		case m.Error != nil:
			s.err = fmt.Errorf("etcd snapshot: %s", m.Error.Message)
		case m.Result != nil:
			s.buf = m.Result.Blob
			s.hashLagging(s.buf)
		}
	}
	n := copy(p, s.buf)
	s.buf = s.buf[n:]
	return n, nil
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
