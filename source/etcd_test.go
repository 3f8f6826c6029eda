package source_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/cairn-backup/cairn/source"
	"github.com/cairn-backup/cairn/tests/testenv"
)

func etcdClient(t *testing.T, url string) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{url}, DialTimeout: 10 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// etcdKeys returns every key and value, one per line.
func etcdKeys(t *testing.T, cli *clientv3.Client) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, "\x00", clientv3.WithFromKey())
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, kv := range resp.Kvs {
		fmt.Fprintf(&b, "%q=%q\n", kv.Key, kv.Value)
	}
	return b.String()
}

func TestEtcdRoundTrip(t *testing.T) {
	srv := testenv.Etcd(t)
	t.Setenv("CAIRN_ETCDUTL", srv.Bin("etcdutl"))
	cli := etcdClient(t, srv.URL)
	ctx := t.Context()
	for i := range 500 {
		if _, err := cli.Put(ctx, fmt.Sprintf("/app/config/%03d", i), strings.Repeat("v", i)); err != nil {
			t.Fatal(err)
		}
	}
	cli.Put(ctx, "/app/binary", "\x00\xff\x01 bytes")
	cli.Delete(ctx, "/app/config/007")
	want := etcdKeys(t, cli)

	spec := source.Spec{Kind: "etcd", Name: "etcd", Endpoints: []string{srv.URL}}
	name, data := mustDump(t, spec)
	if name != "snapshot.db" {
		t.Errorf("file name %q", name)
	}
	cli.Put(ctx, "/app/late", "written after the snapshot")

	dataDir := filepath.Join(t.TempDir(), "etcd", "data")
	peerURL := fmt.Sprintf("http://127.0.0.1:%d", testenv.FreePort(t))
	target := source.Target{DataDir: dataDir, Name: "restored",
		InitialCluster: "restored=" + peerURL, InitialAdvertisePeerURLs: peerURL, ClusterToken: "tok-restored"}
	if err := source.RestoreLive(ctx, spec, target, bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	leftovers, _ := filepath.Glob(filepath.Join(filepath.Dir(dataDir), ".cairn-*"))
	if len(leftovers) > 0 {
		t.Errorf("the restore left %q", leftovers)
	}

	url := testenv.EtcdOn(t, dataDir, "restored", peerURL).URL
	restored := etcdClient(t, url)
	if got := etcdKeys(t, restored); got != want {
		t.Errorf("restored keys differ: %d bytes, want %d", len(got), len(want))
	}
	members, err := restored.MemberList(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(members.Members) != 1 || members.Members[0].Name != "restored" || members.Members[0].PeerURLs[0] != peerURL {
		t.Errorf("restored cluster members: %v", members.Members)
	}

	// The data directory is in use now: a restore into it is refused.
	err = source.RestoreLive(ctx, spec, target, bytes.NewReader(data))
	if err == nil || !strings.Contains(err.Error(), "not empty") {
		t.Errorf("restore into a data directory in use: %v", err)
	}
}

func TestEtcdOverwriteAndDamage(t *testing.T) {
	srv := testenv.Etcd(t)
	t.Setenv("CAIRN_ETCDUTL", srv.Bin("etcdutl"))
	etcdClient(t, srv.URL).Put(t.Context(), "k", "v")
	spec := source.Spec{Kind: "etcd", Name: "etcd", Endpoints: []string{srv.URL}}
	_, data := mustDump(t, spec)

	dataDir := filepath.Join(t.TempDir(), "data")
	old := filepath.Join(dataDir, "old-file")
	os.MkdirAll(dataDir, 0o700)
	os.WriteFile(old, []byte("x"), 0o600)

	// A damaged snapshot fails the restore and keeps the old directory.
	damaged := bytes.Clone(data)
	damaged[len(damaged)/2] ^= 0xff
	err := source.RestoreLive(t.Context(), spec, source.Target{DataDir: dataDir, Overwrite: true}, bytes.NewReader(damaged))
	if err == nil || !strings.Contains(err.Error(), "etcdutl") {
		t.Errorf("restore of a damaged snapshot: %v", err)
	}
	if _, err := os.Stat(old); err != nil {
		t.Errorf("the failed restore removed the old data directory: %v", err)
	}

	if err := source.RestoreLive(t.Context(), spec, source.Target{DataDir: dataDir, Overwrite: true}, bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(old); !os.IsNotExist(err) {
		t.Errorf("after overwriting, the old file is still there: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dataDir, "member", "snap", "db")); err != nil {
		t.Errorf("no restored database: %v", err)
	}

	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
	defer cancel()
	nobody := fmt.Sprintf("http://127.0.0.1:%d", testenv.FreePort(t))
	if _, rc, err := source.Open(ctx, source.Spec{Kind: "etcd", Name: "etcd", Endpoints: []string{nobody}}); err == nil {
		rc.Close()
		t.Error("snapshot from an endpoint nobody listens on: no error")
	}
}

// writeCerts writes a CA, a server certificate for 127.0.0.1 and a client
// certificate, both signed by the CA, as PEM files into dir.
func writeCerts(t *testing.T, dir string) (caFile, serverCert, serverKey, clientCert, clientKey string) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	write := func(name, typ string, der []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	issue := func(serial int64, usage x509.ExtKeyUsage, name string) (string, string) {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: name},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
			ExtKeyUsage: []x509.ExtKeyUsage{usage}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		kder, _ := x509.MarshalPKCS8PrivateKey(key)
		return write(name+".crt", "CERTIFICATE", der), write(name+".key", "PRIVATE KEY", kder)
	}
	serverCert, serverKey = issue(2, x509.ExtKeyUsageServerAuth, "server")
	clientCert, clientKey = issue(3, x509.ExtKeyUsageClientAuth, "client")
	return write("ca.crt", "CERTIFICATE", caDER), serverCert, serverKey, clientCert, clientKey
}

func TestEtcdOverTLS(t *testing.T) {
	caFile, serverCert, serverKey, clientCert, clientKey := writeCerts(t, t.TempDir())
	srv := testenv.EtcdTLS(t, serverCert, serverKey, caFile)
	etcdClient(t, srv.URL).Put(t.Context(), "/tls/key", "value")
	spec := source.Spec{Kind: "etcd", Name: "etcd", CertFile: clientCert, KeyFile: clientKey, CAFile: caFile}

	// host:port takes https from the TLS files; an endpoint that does not
	// answer is passed over for the next.
	dead := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	spec.Endpoints = []string{dead, strings.TrimPrefix(srv.TLSURL, "https://")}
	_, data := mustDump(t, spec)
	if !bytes.Contains(data, []byte("/tls/key")) {
		t.Errorf("the %d-byte snapshot does not hold the key written before it", len(data))
	}

	// Without a client certificate the server refuses, and so does a
	// client that does not trust the server's CA.
	for _, s := range []source.Spec{
		{Kind: "etcd", Name: "etcd", Endpoints: []string{srv.TLSURL}, CAFile: caFile},
		{Kind: "etcd", Name: "etcd", Endpoints: []string{srv.TLSURL}, CertFile: clientCert, KeyFile: clientKey},
	} {
		if _, _, err := dump(t, s); err == nil {
			t.Errorf("snapshot with CA %q and certificate %q: no error", s.CAFile, s.CertFile)
		}
	}
	if _, _, err := dump(t, source.Spec{Kind: "etcd", Name: "etcd", Endpoints: []string{srv.TLSURL}, CAFile: clientKey}); err == nil || !strings.Contains(err.Error(), "no PEM certificate") {
		t.Errorf("a CA file without a certificate: %v", err)
	}
}
