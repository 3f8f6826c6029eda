package source

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// etcdConnectTimeout bounds the wait for the first endpoint to answer;
// the snapshot itself may take as long as it needs.
const etcdConnectTimeout = 20 * time.Second

// openEtcd streams a snapshot from the maintenance API: one consistent
// point in time of the whole keyspace, taken by the server without a
// temporary file on this side.
func openEtcd(ctx context.Context, s Spec) (string, io.ReadCloser, error) {
	if len(s.Endpoints) == 0 {
		return "", nil, errors.New("etcd: no endpoints")
	}
	cfg := clientv3.Config{
		Endpoints:   s.Endpoints,
		DialTimeout: etcdConnectTimeout,
		Logger:      zap.NewNop(),
	}
	if s.CertFile != "" || s.KeyFile != "" || s.CAFile != "" {
		info := transport.TLSInfo{CertFile: s.CertFile, KeyFile: s.KeyFile, TrustedCAFile: s.CAFile}
		tc, err := info.ClientConfig()
		if err != nil {
			return "", nil, fmt.Errorf("etcd TLS: %w", err)
		}
		cfg.TLS = tc
	} else if hasHTTPS(s.Endpoints) {
		cfg.TLS = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	cli, err := clientv3.New(cfg)
	if err != nil {
		return "", nil, fmt.Errorf("etcd %s: %w", strings.Join(s.Endpoints, ","), err)
	}
	// A stream to an endpoint that never answers would wait forever:
	// ask for the status first, with a deadline.
	if err := etcdReachable(ctx, cli, s.Endpoints); err != nil {
		cli.Close()
		return "", nil, err
	}
	resp, err := cli.SnapshotWithVersion(ctx)
	if err != nil {
		cli.Close()
		return "", nil, fmt.Errorf("etcd snapshot from %s: %w", strings.Join(s.Endpoints, ","), err)
	}
	return "snapshot.db", &etcdStream{cli: cli, rc: resp.Snapshot, h: sha256.New()}, nil
}

func etcdReachable(ctx context.Context, cli *clientv3.Client, endpoints []string) error {
	var err error
	for _, ep := range endpoints {
		sctx, cancel := context.WithTimeout(ctx, etcdConnectTimeout)
		_, err = cli.Status(sctx, ep)
		cancel()
		if err == nil {
			return nil
		}
	}
	return fmt.Errorf("etcd %s: %w", strings.Join(endpoints, ","), err)
}

func hasHTTPS(endpoints []string) bool {
	for _, ep := range endpoints {
		if strings.HasPrefix(ep, "https://") {
			return true
		}
	}
	return false
}

// etcdStream is the snapshot. The server ends it with the SHA-256 of what
// came before; checking it is how Close knows the snapshot is whole.
type etcdStream struct {
	cli    *clientv3.Client
	rc     io.ReadCloser
	h      hash.Hash
	tail   []byte // the last sha256.Size bytes seen, not yet hashed
	eof    bool
	err    error
	closed bool
}

func (s *etcdStream) Read(p []byte) (int, error) {
	n, err := s.rc.Read(p)
	s.hashLagging(p[:n])
	switch {
	case err == io.EOF:
		s.eof = true
	case err != nil:
		err = fmt.Errorf("etcd snapshot: %w", err)
		s.err = err
	}
	return n, err
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
	s.rc.Close()
	if s.cli != nil {
		s.cli.Close()
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
