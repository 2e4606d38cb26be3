// Renders the chart with Go's text/template, sprig and the two functions Helm's engine adds (include,
// toYaml), for `python -m deploy.crosscheck`. Arguments: chart directory, merged values as JSON (numbers
// decode to float64, as Helm's do), output directory. Build: GO111MODULE=off GOPATH=/usr/share/gocode
// with Debian's golang-github-masterminds-sprig-dev and golang-github-ghodss-yaml-dev (Helm's
// sigs.k8s.io/yaml is a fork of ghodss/yaml).
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"text/template"

	"github.com/Masterminds/sprig"
	"github.com/ghodss/yaml"
)

func main() {
	chartDir, valuesFile, outDir := os.Args[1], os.Args[2], os.Args[3]
	raw, _ := os.ReadFile(valuesFile)
	var values map[string]interface{}
	if err := json.Unmarshal(raw, &values); err != nil {
		panic(err)
	}
	ctx := map[string]interface{}{
		"Values":  values,
		"Release": map[string]interface{}{"Name": "qwen3vl", "Namespace": "default", "Service": "Helm"},
		"Chart":   map[string]interface{}{"Name": "qwen3-vl", "Version": "0.1.0", "AppVersion": "0.1.0"},
	}
	root := template.New("root").Option("missingkey=zero")
	funcs := sprig.TxtFuncMap()
	funcs["toYaml"] = func(v interface{}) string {
		data, err := yaml.Marshal(v)
		if err != nil {
			return ""
		}
		return strings.TrimSuffix(string(data), "\n")
	}
	funcs["include"] = func(name string, data interface{}) (string, error) {
		var buf bytes.Buffer
		err := root.ExecuteTemplate(&buf, name, data)
		return buf.String(), err
	}
	root.Funcs(funcs)
	files, _ := filepath.Glob(filepath.Join(chartDir, "templates", "*"))
	for _, f := range files {
		text, _ := os.ReadFile(f)
		if _, err := root.New(filepath.Base(f)).Parse(string(text)); err != nil {
			panic(err)
		}
	}
	for _, f := range files {
		name := filepath.Base(f)
		if strings.HasPrefix(name, "_") {
			continue
		}
		var buf bytes.Buffer
		if err := root.ExecuteTemplate(&buf, name, ctx); err != nil {
			fmt.Fprintln(os.Stderr, name, err)
			os.Exit(1)
		}
		out := strings.ReplaceAll(buf.String(), "<no value>", "")
		os.WriteFile(filepath.Join(outDir, name), []byte(out), 0o644)
	}
}
