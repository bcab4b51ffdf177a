# ruff: noqa
# Test vector generator: the team's independent LZS codec from protocol-captures/lzs.py,
# written from protocol.md 9.4 separately from src/trio_ocserv/protocol/compress/lzs.py.
# Kept verbatim below this header so the cross-check stays independent.
# Independent LZS (Stac, ANSI X3.241-style) bitstream implementation written from the spec description (test helper)
class BitReader:
    def __init__(s, data): s.d=data; s.pos=0
    def get(s, n):
        v=0
        for _ in range(n):
            byte=s.pos>>3
            if byte>=len(s.d): raise ValueError("truncated")
            v=(v<<1)|((s.d[byte]>>(7-(s.pos&7)))&1); s.pos+=1
        return v
def lzs_decompress(data, maxlen=65535):
    r=BitReader(data); out=bytearray()
    while True:
        if r.get(1)==0:
            out.append(r.get(8)); continue
        if r.get(1)==1:
            off=r.get(7)
            if off==0: return bytes(out)     # end marker 1 1 0000000
        else:
            off=r.get(11)
        l=r.get(2)
        if l<3: length=l+2
        else:
            l=r.get(2)
            if l<3: length=l+5
            else:
                length=8
                while True:
                    n=r.get(4); length+=n
                    if n!=15: break
        if off==0 or off>len(out): raise ValueError("bad offset")
        for _ in range(length): out.append(out[-off])
        if len(out)>maxlen: raise ValueError("too long")
class BitWriter:
    def __init__(s): s.bits=[]
    def put(s,n,v):
        for i in range(n-1,-1,-1): s.bits.append((v>>i)&1)
    def bytes(s):
        b=s.bits+[0]*((-len(s.bits))%8)
        return bytes(int(''.join(map(str,b[i:i+8])),2) for i in range(0,len(b),8))
def lzs_compress(src):
    w=BitWriter(); i=0; n=len(src)
    while i<n:
        best_len=0; best_off=0
        for off in range(1,min(i,2047)+1):
            l=0
            while i+l<n and src[i+l]==src[i+l-off]: l+=1
            if l>best_len: best_len,best_off=l,off
        if best_len>=2:
            if best_off<128: w.put(2,3); w.put(7,best_off)
            else: w.put(2,2); w.put(11,best_off)
            L=best_len
            if L<5: w.put(2,L-2)
            elif L<8: w.put(2,3); w.put(2,L-5)
            else:
                w.put(4,15); rem=L-8
                while rem>=15: w.put(4,15); rem-=15
                w.put(4,rem)
            i+=best_len
        else:
            w.put(1,0); w.put(8,src[i]); i+=1
    w.put(9,0x180)
    return w.bytes()
if __name__=="__main__":
    import os
    for t in [b"", b"a", b"abababababababababab", os.urandom(50), b"x"*300, bytes(range(256))*5]:
        assert lzs_decompress(lzs_compress(t))==t
    print("self-test ok")
