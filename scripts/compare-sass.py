import re, sys, json, subprocess, os
def funcs(path):
    txt=subprocess.run(["cuobjdump","--dump-sass",path],capture_output=True,text=True).stdout
    parts=re.split(r'\t\tFunction : (\S+)\n', txt)
    d={}
    for i in range(1,len(parts),2):
        lines=[re.sub(r'/\*[0-9a-f]{4}\*/','',l).split(';')[0].strip() for l in parts[i+1].splitlines() if '/*' in l and ';' in l]
        d[parts[i]]=lines
    return d
def compile(params, old):
    env=dict(os.environ)
    env["XCACHE_FLAGS"]=("template_path=/tmp/old," if old else "")+"cuda_arch=sm_90"
    cmd=["./target/debug/xcache","compile","-t",params[0],"--json"]
    for p in params[1:]: cmd+=["-p",p]
    r=subprocess.run(cmd,capture_output=True,text=True,env=env)
    if r.returncode: print(r.stdout, r.stderr); sys.exit(1)
    return json.loads(r.stdout)["path"]
params=sys.argv[1:]
o=funcs(compile(params,True)); n=funcs(compile(params,False))
# match by body: for each new function find identical old one
oldbodies={tuple(v):k for k,v in o.items()}
bad=0
for k,v in n.items():
    if tuple(v) in oldbodies: continue
    bad+=1
    # find closest by length
    print("NO IDENTICAL OLD KERNEL for", k, len(v))
print(params, "new kernels", len(n), "old", len(o), "without an identical old one:", bad)
