package testenv

import (
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
)

const etcdInstall = "cd tests/tools/etcd && go build -o $GOBIN/etcd go.etcd.io/etcd/server/v3, and etcdctl and etcdutl likewise"

// EtcdServer is a running single-member etcd cluster without auth or TLS.
type EtcdServer struct {
	Endpoint string // host:port of the client API
	URL      string // client URL, http://Endpoint
	TLSURL   string // https client URL that wants a client certificate (EtcdTLS)
	Name     string // member name
	DataDir  string

	t    testing.TB
	proc *process
}

// Etcd starts a new single-member etcd cluster for the test and stops it
// when the test ends.
func Etcd(t testing.TB) *EtcdServer {
	t.Helper()
	bin := findBinary(t, "etcd", etcdInstall)
	dir := serverDir(t, "etcd")
	return startEtcd(t, bin, dir, "n1", nil, nil)
}

// EtcdTLS starts etcd like Etcd with a second client listener, TLSURL,
// that serves certFile and keyFile and takes only clients whose
// certificate caFile signed.
func EtcdTLS(t testing.TB, certFile, keyFile, caFile string) *EtcdServer {
	t.Helper()
	bin := findBinary(t, "etcd", etcdInstall)
	dir := serverDir(t, "etcd")
	return startEtcd(t, bin, dir, "n1", nil, []string{certFile, keyFile, caFile})
}

// RestoreEtcd restores a snapshot file (etcdctl snapshot save, or the
// client's Maintenance.Snapshot stream) into the data directory of a new
// member with etcdutl, starts it and returns it. The restored cluster has
// that one member only.
func RestoreEtcd(t testing.TB, snapshotPath string) *EtcdServer {
	t.Helper()
	bin := findBinary(t, "etcd", etcdInstall)
	etcdutl := findBinary(t, "etcdutl", etcdInstall)
	dir := serverDir(t, "etcd")
	// The member's peer URL is written into the data directory by the
	// restore, so each attempt with new ports restores again.
	restore := func(name, peerURL, dataDir string) error {
		if err := os.RemoveAll(dataDir); err != nil {
			return err
		}
		cmd := exec.Command(etcdutl, "snapshot", "restore", snapshotPath,
			"--data-dir", dataDir, "--name", name,
			"--initial-cluster", name+"="+peerURL, "--initial-advertise-peer-urls", peerURL,
			"--initial-cluster-token", "tok-"+name)
		cmd.Env = filterEnv(os.Environ(), []string{"ETCD"})
		return run(cmd)
	}
	return startEtcd(t, bin, dir, "restored", restore, nil)
}

// startEtcd starts etcd as member name in dir, first running prepare (if
// not nil) with the peer URL and data directory of each attempt, and
// listening on TLSURL as well when tlsFiles holds a certificate, its key
// and the clients' CA.
func startEtcd(t testing.TB, bin, dir, name string, prepare func(name, peerURL, dataDir string) error, tlsFiles []string) *EtcdServer {
	t.Helper()
	s := &EtcdServer{Name: name, DataDir: filepath.Join(dir, "data"), t: t}
	var err error
	for range 3 {
		client, peer := freePort(t), freePort(t)
		if client == peer {
			continue
		}
		s.Endpoint = hostPort(client)
		s.URL = "http://" + s.Endpoint
		peerURL := "http://" + hostPort(peer)
		if prepare != nil {
			if err := prepare(name, peerURL, s.DataDir); err != nil {
				t.Fatalf("testenv: etcd restore: %v", err)
			}
		}
		s.proc = etcdProcess(t, bin, dir, name, s.DataDir, s.URL, peerURL)
		if tlsFiles != nil {
			s.TLSURL = "https://" + hostPort(freePort(t))
			for i, a := range s.proc.args {
				if a == "--listen-client-urls" || a == "--advertise-client-urls" {
					s.proc.args[i+1] += "," + s.TLSURL
				}
			}
			s.proc.args = append(s.proc.args, "--cert-file", tlsFiles[0], "--key-file", tlsFiles[1],
				"--trusted-ca-file", tlsFiles[2], "--client-cert-auth")
		}
		if err = s.proc.start(); err == nil {
			s.proc.register()
			return s
		}
	}
	t.Fatalf("testenv: %v\nlast lines of the etcd log:\n%s", err, s.proc.logTail(50))
	return nil
}

// EtcdOn starts etcd on an existing data directory, as an operator does
// after a restore: member name, with the peer URL the restore wrote into
// the directory; only the client port is new.
func EtcdOn(t testing.TB, dataDir, name, peerURL string) *EtcdServer {
	t.Helper()
	bin := findBinary(t, "etcd", etcdInstall)
	dir := serverDir(t, "etcd")
	s := &EtcdServer{Name: name, DataDir: dataDir, t: t}
	var err error
	for range 3 {
		s.Endpoint = hostPort(freePort(t))
		s.URL = "http://" + s.Endpoint
		s.proc = etcdProcess(t, bin, dir, name, dataDir, s.URL, peerURL)
		if err = s.proc.start(); err == nil {
			s.proc.register()
			return s
		}
	}
	t.Fatalf("testenv: %v\nlast lines of the etcd log:\n%s", err, s.proc.logTail(50))
	return nil
}

// etcdProcess is etcd as member name on dataDir, logging into dir.
func etcdProcess(t testing.TB, bin, dir, name, dataDir, clientURL, peerURL string) *process {
	return &process{
		t:    t,
		name: "etcd",
		bin:  bin,
		// The initial-cluster flags only matter for a new data
		// directory; a restored or restarted member reads its own.
		args: []string{"--name", name, "--data-dir", dataDir,
			"--listen-client-urls", clientURL, "--advertise-client-urls", clientURL,
			"--listen-peer-urls", peerURL, "--initial-advertise-peer-urls", peerURL,
			"--initial-cluster", name + "=" + peerURL, "--initial-cluster-state", "new",
			"--initial-cluster-token", "tok-" + name,
			"--logger", "zap", "--log-level", "warn", "--log-outputs", "stderr"},
		// etcd reads every flag from ETCD_* variables too.
		envDrop: []string{"ETCD"},
		ready:   httpReady(clientURL + "/health"),
		stopSig: syscall.SIGTERM,
		logPath: filepath.Join(dir, "etcd.log"),
	}
}

// Stop stops the server (SIGTERM) and waits for it to exit. Its ports and
// data stay reserved for Start. Stopping a stopped server does nothing.
func (s *EtcdServer) Stop() { s.proc.stop() }

// Start starts a stopped server again on the same ports and data directory
// and waits until it is ready.
func (s *EtcdServer) Start() {
	s.t.Helper()
	restart(s.t, s.proc, s.Endpoint, s.proc.start)
}

// Bin returns the path of an etcd tool (etcdctl, etcdutl), skipping or
// failing the test like the server itself when it is missing.
func (s *EtcdServer) Bin(name string) string {
	s.t.Helper()
	return findBinary(s.t, name, etcdInstall)
}
