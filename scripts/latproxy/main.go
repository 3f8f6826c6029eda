// Command latproxy forwards TCP connections from -listen to -to and holds
// every read from the client back by -delay before passing it on, so that
// each request to the server waits that much longer: a distant S3 server,
// imitated on loopback. It prints the address it listens on.
package main

import (
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"time"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "address to listen on")
	to := flag.String("to", "", "server address, host:port")
	delay := flag.Duration("delay", 10*time.Millisecond, "delay before each read from a client is forwarded")
	flag.Parse()
	l, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(l.Addr())
	for {
		c, err := l.Accept()
		if err != nil {
			log.Fatal(err)
		}
		go forward(c, *to, *delay)
	}
}

func forward(c net.Conn, to string, delay time.Duration) {
	defer c.Close()
	s, err := net.Dial("tcp", to)
	if err != nil {
		return
	}
	defer s.Close()
	go func() { io.Copy(c, s); c.Close() }()
	buf := make([]byte, 64<<10)
	for {
		n, err := c.Read(buf)
		if n > 0 {
			time.Sleep(delay)
			if _, werr := s.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}
