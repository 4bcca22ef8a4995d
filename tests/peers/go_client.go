// A Go crypto/tls client for tests/unclean_end.rs: connects, sends REQUEST, reads to the end
// and prints one JSON line with what it read and the error that ended the read. Go's API
// returns io.EOF for a close_notify and for a bare FIN on a record boundary alike, so only a
// non-EOF error shows an unclean end.
//
// usage: go_client HOST:PORT CA_FILE REQUEST (an empty REQUEST sends nothing)
package main

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"io"
	"os"
	"time"
)

func main() {
	addr, caFile, request := os.Args[1], os.Args[2], os.Args[3]
	pem, err := os.ReadFile(caFile)
	if err != nil {
		fail(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pem)
	conn, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: roots, ServerName: "localhost"})
	if err != nil {
		fail(err)
	}
	conn.SetDeadline(time.Now().Add(15 * time.Second))
	if request != "" {
		if _, err := conn.Write([]byte(request)); err != nil {
			report(nil, err)
			return
		}
	}
	report(io.ReadAll(conn))
}

// report prints what was read and how the stream ended. ReadAll turns io.EOF into a nil
// error: nil here is the clean end Go's API reports.
func report(data []byte, err error) {
	out := map[string]string{"data": string(data), "error": "", "eof": "false"}
	if err == nil {
		out["eof"] = "true"
	} else {
		out["error"] = err.Error()
		if errors.Is(err, io.EOF) {
			out["eof"] = "true"
		}
	}
	line, _ := json.Marshal(out)
	os.Stdout.Write(append(line, '\n'))
}

func fail(err error) {
	os.Stderr.WriteString("go_client: " + err.Error() + "\n")
	os.Exit(2)
}
