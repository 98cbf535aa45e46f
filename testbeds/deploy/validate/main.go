// Command validate checks the deployment files in testbeds/deploy with the parsers their real
// tools use, where those tools cannot run here (no Docker engine, no Kubernetes cluster):
//
//	validate compose FILE      load with compose-go (Docker Compose's own loader: schema,
//	                           interpolation, merge keys) and print the resolved project as JSON
//	validate k8s FILE...       decode every document strictly into its Kubernetes API type
//	                           (unknown or misspelt fields and wrong types are errors), and
//	                           check Deployments and NetworkPolicies as the API server would
//	validate dockerfile FILE   parse with BuildKit's Dockerfile parser and instruction parser,
//	                           with its linter; print the stage names, one a line
//
// It exits 1 with a message naming the file and the problem; testbeds/tests/test_deploy_files.py
// runs it.
package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/linter"
	"github.com/moby/buildkit/frontend/dockerfile/parser"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

// maxFileBytes bounds what is read from one file.
const maxFileBytes = 4 << 20

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "validate:", err)
		os.Exit(1)
	}
}

func run(args []string, out io.Writer) error {
	if len(args) < 2 {
		return errors.New("usage: validate compose FILE | k8s FILE... | dockerfile FILE")
	}
	switch args[0] {
	case "compose":
		return composeFile(args[1], out)
	case "k8s":
		for _, f := range args[1:] {
			if err := k8sFile(f, out); err != nil {
				return err
			}
		}
		return nil
	case "dockerfile":
		return dockerfile(args[1], out)
	default:
		return fmt.Errorf("unknown check %q", args[0])
	}
}

func readFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxFileBytes+1))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if len(data) > maxFileBytes {
		return nil, fmt.Errorf("%s: larger than %d bytes", path, maxFileBytes)
	}
	return data, nil
}

func composeFile(path string, out io.Writer) error {
	abs, err := filepath.Abs(path)
	if err != nil {
		return err
	}
	// No environment from this process: the file must stand on its own.
	opts, err := cli.NewProjectOptions([]string{abs},
		cli.WithWorkingDirectory(filepath.Dir(abs)),
		cli.WithEnv(nil),
		cli.WithConsistency(true),
		cli.WithResolvedPaths(true),
	)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	project, err := opts.LoadProject(context.Background())
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	data, err := project.MarshalJSON()
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	_, err = out.Write(append(data, '\n'))
	return err
}

// k8sFile decodes each YAML document of path strictly into the type its kind names.
func k8sFile(path string, out io.Writer) error {
	data, err := readFile(path)
	if err != nil {
		return err
	}
	reader := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	for doc := 1; doc <= 100; doc++ {
		raw, err := reader.Read()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("%s: document %d: %w", path, doc, err)
		}
		if len(bytes.TrimSpace(stripComments(raw))) == 0 {
			continue
		}
		kind, name, err := decodeStrict(raw)
		if err != nil {
			return fmt.Errorf("%s: document %d: %w", path, doc, err)
		}
		fmt.Fprintf(out, "%s\t%s\t%s\n", filepath.Base(path), kind, name)
	}
	return fmt.Errorf("%s: more than 100 documents", path)
}

func decodeStrict(raw []byte) (kind, name string, err error) {
	var head struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
	}
	if err := yaml.Unmarshal(raw, &head); err != nil {
		return "", "", err
	}
	type object interface{ GetName() string }
	var obj object
	switch head.APIVersion + " " + head.Kind {
	case "v1 Namespace":
		obj = &corev1.Namespace{}
	case "v1 ConfigMap":
		obj = &corev1.ConfigMap{}
	case "v1 Service":
		obj = &corev1.Service{}
	case "apps/v1 Deployment":
		obj = &appsv1.Deployment{}
	case "policy/v1 PodDisruptionBudget":
		obj = &policyv1.PodDisruptionBudget{}
	case "networking.k8s.io/v1 NetworkPolicy":
		obj = &networkingv1.NetworkPolicy{}
	default:
		return "", "", fmt.Errorf("apiVersion %q kind %q is not one this check knows", head.APIVersion, head.Kind)
	}
	if err := yaml.UnmarshalStrict(raw, obj); err != nil {
		return "", "", fmt.Errorf("%s: %w", head.Kind, err)
	}
	if msgs := validation.IsDNS1123Subdomain(obj.GetName()); len(msgs) > 0 {
		return "", "", fmt.Errorf("%s name %q: %s", head.Kind, obj.GetName(), strings.Join(msgs, "; "))
	}
	if d, ok := obj.(*appsv1.Deployment); ok {
		if err := checkDeployment(d); err != nil {
			return "", "", fmt.Errorf("Deployment %s: %w", d.Name, err)
		}
	}
	if p, ok := obj.(*networkingv1.NetworkPolicy); ok {
		if err := checkNetworkPolicy(p); err != nil {
			return "", "", fmt.Errorf("NetworkPolicy %s: %w", p.Name, err)
		}
	}
	return head.Kind, obj.GetName(), nil
}

// checkDeployment checks what the API server would refuse and strict decoding cannot see.
func checkDeployment(d *appsv1.Deployment) error {
	if d.Spec.Selector == nil {
		return errors.New("spec.selector is missing")
	}
	for k, v := range d.Spec.Selector.MatchLabels {
		if d.Spec.Template.Labels[k] != v {
			return fmt.Errorf("selector %s=%s does not match the pod template's labels", k, v)
		}
	}
	ports := map[string]bool{}
	for _, c := range d.Spec.Template.Spec.Containers {
		if c.Image == "" {
			return fmt.Errorf("container %s has no image", c.Name)
		}
		for _, p := range c.Ports {
			if msgs := validation.IsValidPortName(p.Name); len(msgs) > 0 {
				return fmt.Errorf("port name %q: %s", p.Name, strings.Join(msgs, "; "))
			}
			ports[p.Name] = true
		}
		for _, probe := range []*corev1.Probe{c.ReadinessProbe, c.LivenessProbe, c.StartupProbe} {
			if probe == nil {
				continue
			}
			var port string
			switch {
			case probe.HTTPGet != nil:
				port = probe.HTTPGet.Port.StrVal
			case probe.TCPSocket != nil:
				port = probe.TCPSocket.Port.StrVal
			}
			if port != "" && !ports[port] {
				return fmt.Errorf("container %s: a probe names port %q, which it does not declare", c.Name, port)
			}
		}
		mounts := map[string]bool{}
		for _, v := range d.Spec.Template.Spec.Volumes {
			mounts[v.Name] = true
		}
		for _, m := range c.VolumeMounts {
			if !mounts[m.Name] {
				return fmt.Errorf("container %s mounts volume %q, which the pod does not define", c.Name, m.Name)
			}
		}
	}
	return nil
}

// checkNetworkPolicy checks what the API server's validation would refuse and strict decoding
// cannot see: policy types, label selectors, port names and numbers, and that a policy which
// restricts a direction says so in policyTypes (else the API server would infer only Ingress).
func checkNetworkPolicy(p *networkingv1.NetworkPolicy) error {
	types := map[networkingv1.PolicyType]bool{}
	for _, t := range p.Spec.PolicyTypes {
		if t != networkingv1.PolicyTypeIngress && t != networkingv1.PolicyTypeEgress {
			return fmt.Errorf("policyTypes: unknown type %q", t)
		}
		types[t] = true
	}
	if len(p.Spec.Egress) > 0 && !types[networkingv1.PolicyTypeEgress] {
		return errors.New("egress rules without Egress in policyTypes are ignored")
	}
	if err := checkSelector("spec.podSelector", &p.Spec.PodSelector); err != nil {
		return err
	}
	for i, rule := range p.Spec.Ingress {
		where := fmt.Sprintf("ingress[%d]", i)
		if err := checkPeers(where, rule.From, rule.Ports); err != nil {
			return err
		}
	}
	for i, rule := range p.Spec.Egress {
		where := fmt.Sprintf("egress[%d]", i)
		if err := checkPeers(where, rule.To, rule.Ports); err != nil {
			return err
		}
	}
	return nil
}

func checkPeers(where string, peers []networkingv1.NetworkPolicyPeer, ports []networkingv1.NetworkPolicyPort) error {
	for j, peer := range peers {
		at := fmt.Sprintf("%s peer %d", where, j)
		if peer.IPBlock != nil && (peer.PodSelector != nil || peer.NamespaceSelector != nil) {
			return fmt.Errorf("%s: ipBlock cannot be combined with selectors", at)
		}
		if peer.IPBlock == nil && peer.PodSelector == nil && peer.NamespaceSelector == nil {
			return fmt.Errorf("%s: names no peer", at)
		}
		if err := checkSelector(at+" podSelector", peer.PodSelector); err != nil {
			return err
		}
		if err := checkSelector(at+" namespaceSelector", peer.NamespaceSelector); err != nil {
			return err
		}
	}
	for j, port := range ports {
		at := fmt.Sprintf("%s port %d", where, j)
		if port.Protocol != nil && *port.Protocol != corev1.ProtocolTCP &&
			*port.Protocol != corev1.ProtocolUDP && *port.Protocol != corev1.ProtocolSCTP {
			return fmt.Errorf("%s: unknown protocol %q", at, *port.Protocol)
		}
		if port.Port == nil {
			continue
		}
		var msgs []string
		if port.Port.StrVal != "" {
			msgs = validation.IsValidPortName(port.Port.StrVal)
		} else {
			msgs = validation.IsValidPortNum(int(port.Port.IntVal))
		}
		if len(msgs) > 0 {
			return fmt.Errorf("%s: %s", at, strings.Join(msgs, "; "))
		}
	}
	return nil
}

func checkSelector(where string, s *metav1.LabelSelector) error {
	if s == nil {
		return nil
	}
	if _, err := metav1.LabelSelectorAsSelector(s); err != nil {
		return fmt.Errorf("%s: %w", where, err)
	}
	return nil
}

func dockerfile(path string, out io.Writer) error {
	data, err := readFile(path)
	if err != nil {
		return err
	}
	result, err := parser.Parse(bytes.NewReader(data))
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	for _, w := range result.Warnings {
		return fmt.Errorf("%s: line %d: %s", path, w.Location.Start.Line, w.Short)
	}
	var warnings []string
	lint := linter.New(&linter.Config{Warn: func(rule, _, _, msg string, loc []parser.Range) {
		line := 0
		if len(loc) > 0 {
			line = loc[0].Start.Line
		}
		warnings = append(warnings, fmt.Sprintf("line %d: %s: %s", line, rule, msg))
	}})
	stages, _, err := instructions.Parse(result.AST, lint)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if len(warnings) > 0 {
		return fmt.Errorf("%s: BuildKit lint: %s", path, strings.Join(warnings, "; "))
	}
	for _, s := range stages {
		fmt.Fprintln(out, s.Name)
	}
	return nil
}

// stripComments drops comment lines, so a document of comments only counts as empty.
func stripComments(raw []byte) []byte {
	var b bytes.Buffer
	for _, line := range bytes.Split(raw, []byte("\n")) {
		if t := bytes.TrimSpace(line); len(t) > 0 && t[0] != '#' {
			b.Write(line)
			b.WriteByte('\n')
		}
	}
	return b.Bytes()
}
